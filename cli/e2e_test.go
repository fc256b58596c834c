package cli

// End-to-end tests of the user CLI against a real cluster in this process:
// a host (API, gateway, store) and one agent running VPS containers on the
// Docker engine, driven through run() exactly as Main would, with the real
// OpenSSH client, scp, sftp and rsync.
//
// Assumptions:
//   - A Docker engine answers (docker info) and the image
//     kohakuriver/vps:latest exists (`sudo bash testdata/vpsimage/build.sh`);
//     nothing is pulled.
//   - ssh, scp, sftp and rsync are installed here (rsync is in the image).
//   - Ports 20000-39999 on 127.0.0.1 are mostly free (per-VPS gateway ports).
//
// Without Docker or the image the tests skip, unless
// KOHAKURIVER_REQUIRE_DOCKER=1, when they fail. HOME is a temporary
// directory: keys, auth.json, known_hosts and ssh configs go there. OpenSSH
// itself reads ~ from the passwd entry, never $HOME, so every ssh command
// gets its files by absolute path.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/agent"
	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/gateway"
	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/gateway/host"
	"github.com/kohakuriver/kohakuriver/store"
)

const e2eImage = "kohakuriver/vps:latest"

func requireDocker(t *testing.T) {
	t.Helper()
	skip := func(why string) {
		if os.Getenv("KOHAKURIVER_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s (KOHAKURIVER_REQUIRE_DOCKER=1)", why)
		}
		t.Skip(why + " (set KOHAKURIVER_REQUIRE_DOCKER=1 to fail instead)")
	}
	if err := exec.Command("docker", "info").Run(); err != nil {
		skip("no Docker engine")
	}
	if err := exec.Command("docker", "image", "inspect", e2eImage).Run(); err != nil {
		skip("image " + e2eImage + " missing: sudo bash testdata/vpsimage/build.sh")
	}
	for _, tool := range []string{"ssh", "scp", "sftp", "rsync"} {
		if _, err := exec.LookPath(tool); err != nil {
			skip("no " + tool + " client")
		}
	}
}

// e2eCluster is a host and one agent on Docker, shared by the subtests of
// one test.
type e2eCluster struct {
	host             *host.Host
	dataDir          string
	node             string
	apiPort, sshPort int
	admin            *api.Client
	logs             *syncBuffer
}

func newE2ECluster(t *testing.T) *e2eCluster {
	t.Helper()
	requireDocker(t)
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	base := 20000 + int(time.Now().UnixNano()%1000)*10
	dataDir := t.TempDir()
	h, err := host.New(host.Config{
		DataDir: dataDir, APIAddr: "127.0.0.1:0", SSHAddr: "127.0.0.1:0", PortHost: "127.0.0.1",
		PortMin: base, PortMax: base + 9, PublicHost: "127.0.0.1", Logger: log.With("component", "host"),
		DefaultImage: e2eImage, HeartbeatTimeout: 5 * time.Second,
		Gateway: func(g *gateway.Config) { g.Throttle.MaxFailures = -1 },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		h.Close()
		t.Fatal(err)
	}
	c := &e2eCluster{host: h, dataDir: dataDir, logs: logs, node: fmt.Sprintf("cli-%d", os.Getpid()),
		apiPort: h.APIAddr().(*net.TCPAddr).Port, sshPort: h.SSHAddr().(*net.TCPAddr).Port}
	t.Cleanup(func() {
		h.Close()
		if t.Failed() {
			t.Logf("cluster log:\n%s", logs.String())
		}
	})
	c.admin = api.NewClient(fmt.Sprintf("http://127.0.0.1:%d", c.apiPort), c.adminToken(t), nil)
	c.startAgent(t, log.With("component", "agent"))
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, err := h.Store().Node(context.Background(), c.node)
		if err == nil && n.Status == store.NodeOnline {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not come online", c.node)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c
}

func (c *e2eCluster) adminToken(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(c.dataDir, host.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// startAgent runs the agent until the test ends, then removes its
// containers.
func (c *e2eCluster) startAgent(t *testing.T, log *slog.Logger) {
	rt, err := docker.New(docker.Options{NodeName: c.node, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{
		Name: c.node, ListenAddr: "127.0.0.1:0", HostURL: fmt.Sprintf("http://127.0.0.1:%d", c.apiPort),
		ClusterToken: c.host.ClusterToken, Runtime: rt, Logger: log, HeartbeatInterval: 500 * time.Millisecond,
	})
	if err != nil {
		rt.Close()
		t.Fatal(err)
	}
	if err := a.Listen(); err != nil {
		rt.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if infos, err := rt.List(ctx); err == nil {
			for _, info := range infos {
				_ = rt.Remove(ctx, info.TaskID)
			}
		}
		rt.Close()
	})
}

// loggedIn returns a user whose CLI is logged in to the cluster as a new
// non-admin user.
func (c *e2eCluster) loggedIn(t *testing.T, name string) *user {
	t.Helper()
	nu, err := c.admin.CreateUser(context.Background(), name, false)
	if err != nil {
		t.Fatal(err)
	}
	u := newUser(t)
	u.ssh = "ssh"
	u.stdin = nu.Token + "\n"
	u.mustRun("-H", "127.0.0.1", "-P", itoa(c.apiPort), "--ssh-port", itoa(c.sshPort), "login")
	u.stdin = ""
	return u
}

// shell runs a command line with sh in dir and returns its output.
func shell(t *testing.T, dir, line string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// createJSON runs vps create --format json with args.
func createJSON(t *testing.T, u *user, args ...string) createdVPS {
	t.Helper()
	r := u.mustRun(append([]string{"vps", "create", "--format", "json"}, args...)...)
	var v createdVPS
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("create output is not JSON: %v\n%s", err, r)
	}
	if v.Status != store.StatusRunning || !store.IsTaskID(v.TaskID) || v.SSHPort == 0 {
		t.Fatalf("created %+v", v)
	}
	return v
}

// hostname reads /etc/hostname of a VPS through terminal exec.
func hostname(t *testing.T, u *user, ref string) string {
	t.Helper()
	return u.mustRun("terminal", "exec", ref, "--", "cat", "/etc/hostname").stdout
}
