package host

// End-to-end tests of the whole path on the real Docker engine: host (API +
// gateway + store) and two agents in this process, VPS containers from the
// image testdata/vpsimage/build.sh builds, and the real OpenSSH client.
// They skip without a Docker engine or the image, and fail instead when
// KOHAKURIVER_REQUIRE_DOCKER=1 (as CI sets it).

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/agent"
	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/gateway"
	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/gateway/testport"
	"github.com/kohakuriver/kohakuriver/store"
)

const testImage = "kohakuriver/vps:latest"

func requireDocker(t *testing.T) {
	t.Helper()
	skip := func(why string) {
		if os.Getenv("KOHAKURIVER_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s (KOHAKURIVER_REQUIRE_DOCKER=1)", why)
		}
		t.Skip(why)
	}
	if err := exec.Command("docker", "info").Run(); err != nil {
		skip("no Docker engine")
	}
	if err := exec.Command("docker", "image", "inspect", testImage).Run(); err != nil {
		skip("image " + testImage + " missing: bash testdata/vpsimage/build.sh")
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		skip("no ssh client")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// cluster is a host and its agents for one test.
type cluster struct {
	t        *testing.T
	host     *Host
	dataDir  string
	admin    *api.Client
	agents   map[string]*runningAgent
	known    string // known_hosts pinning the gateway (main port and VPS ports)
	logs     *syncBuffer
	portBase int
	// relaySocket, when set, is the handoff socket
	// (agent.Config.RelaySocket) of the agents started while it is.
	relaySocket string
}

type runningAgent struct {
	name   string
	addr   string
	cancel context.CancelFunc
	done   chan error
	rt     *docker.Runtime
}

func freePort(t *testing.T) int { return testport.Pick(t, testport.Host) }

func newCluster(t *testing.T, nodes ...string) *cluster {
	t.Helper()
	requireDocker(t)
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := &cluster{t: t, dataDir: t.TempDir(), agents: map[string]*runningAgent{}, logs: logs}
	c.portBase = testport.Block(testport.HostBlocks, 10)
	h, err := New(Config{
		DataDir: c.dataDir, APIAddr: "127.0.0.1:0", SSHAddr: "127.0.0.1:0", PortHost: "127.0.0.1",
		PortMin: c.portBase, PortMax: c.portBase + 9, PublicHost: "127.0.0.1", Logger: log,
		DefaultImage: testImage, HeartbeatTimeout: 3 * time.Second,
		Gateway: func(g *gateway.Config) { g.Throttle.MaxFailures = -1 },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	c.host = h
	t.Cleanup(func() {
		h.Close()
		if t.Failed() {
			t.Logf("cluster log:\n%s", logs.String())
		}
	})
	tok, err := os.ReadFile(filepath.Join(c.dataDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	c.admin = api.NewClient("http://"+h.APIAddr().String(), strings.TrimSpace(string(tok)), nil)
	for _, n := range nodes {
		c.startAgent(n, "127.0.0.1:0")
	}
	for _, n := range nodes {
		c.waitNode(n, store.NodeOnline)
	}
	var lines []string
	sshPort := h.SSHAddr().(*net.TCPAddr).Port
	lines = append(lines, gateway.KnownHostsLines(h.HostKeys, fmt.Sprintf("[127.0.0.1]:%d", sshPort))...)
	for p := c.portBase; p <= c.portBase+9; p++ {
		lines = append(lines, gateway.KnownHostsLines(h.HostKeys, fmt.Sprintf("[127.0.0.1]:%d", p))...)
	}
	c.known = filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(c.known, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// nodeName makes node names unique per test run so that concurrent runs on
// one engine never see each other's containers.
func nodeName(t *testing.T, n string) string {
	return fmt.Sprintf("%s-%d", n, os.Getpid())
}

func (c *cluster) startAgent(name, listen string) *runningAgent {
	c.t.Helper()
	return c.startAgentAt(name, listen, "http://"+c.host.APIAddr().String())
}

func (c *cluster) startAgentAt(name, listen, hostURL string) *runningAgent {
	t := c.t
	t.Helper()
	log := slog.New(slog.NewJSONHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("agent", name)
	rt, err := docker.New(docker.Options{NodeName: name, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{
		Name: name, ListenAddr: listen, HostURL: hostURL, RelaySocket: c.relaySocket,
		ClusterToken: c.host.ClusterToken, Runtime: rt, Logger: log, HeartbeatInterval: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{name: name, addr: a.Addr().String(), cancel: cancel, done: make(chan error, 1), rt: rt}
	go func() { ra.done <- a.Run(ctx) }()
	c.agents[name] = ra
	t.Cleanup(func() {
		ra.stop()
		// Remove this test's containers.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if infos, err := rt.List(ctx); err == nil {
			for _, info := range infos {
				_ = rt.Remove(ctx, info.TaskID)
			}
		}
		rt.Close()
	})
	return ra
}

func (ra *runningAgent) stop() {
	if ra.cancel != nil {
		ra.cancel()
		<-ra.done
		ra.cancel = nil
	}
}

func (c *cluster) waitNode(name string, want store.NodeStatus) {
	c.t.Helper()
	waitFor(c.t, "node "+name+" "+string(want), func() bool {
		n, err := c.host.Store().Node(context.Background(), name)
		return err == nil && n.Status == want
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type userKey struct {
	path string
	line string
	fp   string
}

func newUserKey(t *testing.T) userKey {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := gossh.MarshalPrivateKey(priv, "")
	path := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sp, _ := gossh.NewPublicKey(pub)
	return userKey{path: path, line: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sp))) + " e2e", fp: gossh.FingerprintSHA256(sp)}
}

// ssh runs the real client against the gateway and returns stdout, stderr
// and the exit status.
func (c *cluster) ssh(key userKey, port int, user string, stdin string, cmd ...string) (string, string, int) {
	c.t.Helper()
	return c.sshOpts(key, port, user, stdin, nil, cmd...)
}

// sshOpts is ssh with extra client options before the destination.
func (c *cluster) sshOpts(key userKey, port int, user string, stdin string, opts []string, cmd ...string) (string, string, int) {
	c.t.Helper()
	if port == 0 {
		port = c.host.SSHAddr().(*net.TCPAddr).Port
	}
	args := []string{"-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + c.known, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=30",
		"-i", key.path, "-p", strconv.Itoa(port)}
	args = append(append(args, opts...), user+"@127.0.0.1")
	args = append(args, cmd...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	command := exec.CommandContext(ctx, "ssh", args...)
	command.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	command.Stdout, command.Stderr = &out, &errb
	err := command.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// userClient creates an API user and returns its client.
func (c *cluster) userClient(name string) *api.Client {
	c.t.Helper()
	u, err := c.admin.CreateUser(context.Background(), name, false)
	if err != nil {
		c.t.Fatal(err)
	}
	return api.NewClient("http://"+c.host.APIAddr().String(), u.Token, nil)
}

func (c *cluster) createVPS(cl *api.Client, node, name string, keys ...userKey) store.VPS {
	c.t.Helper()
	req := api.CreateVPSRequest{Name: name, Node: node, KeyMode: store.KeyModeString}
	for _, k := range keys {
		req.PublicKeys = append(req.PublicKeys, k.line)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, err := cl.CreateVPS(ctx, req)
	if err != nil {
		c.t.Fatalf("create vps %s: %v", name, err)
	}
	return v
}
