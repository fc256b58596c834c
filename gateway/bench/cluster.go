package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/gateway"
	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/gateway/host"
	"github.com/kohakuriver/kohakuriver/store"
)

// env is everything the benchmark started: host, agent, VPS, jump sshd and
// the ssh client configuration for the three paths.
type env struct {
	dir      string // temp root: data dir, keys, configs
	nodeName string

	host  *host.Host
	rt    *docker.Runtime
	agent *agentProc
	admin *api.Client

	vps         store.VPS
	containerID string      // the VPS's container, for its cgroup figures
	extra       []store.VPS // more VPSs for the sessions measure
	extraIDs    []string    // and their containers

	keyPath string       // client private key (OpenSSH PEM)
	signer  gossh.Signer // the same key, for Go clients
	keyLine string       // its authorized_keys line

	directHost string // the VPS sshd as a user on the node reaches it
	directPort int
	gwPort     int
	jumpPort   int
	jump       *exec.Cmd
	jumpDone   chan error
	jumpLog    *lockedBuffer

	known      string // known_hosts for all three paths
	cfgDefault string // ssh_config: client defaults
	cfgGCM     string // ssh_config: Ciphers aes128-gcm@openssh.com (both hops of B)
}

// path is one way to reach the VPS with the OpenSSH client: the arguments
// between the options and the remote command.
type path struct {
	name string
	args []string
}

func (e *env) pathA() path {
	return path{"A", []string{"-p", strconv.Itoa(e.directPort), "root@" + e.directHost}}
}

func (e *env) pathB() path {
	return path{"B", []string{"-J", "root@127.0.0.1:" + strconv.Itoa(e.jumpPort), "-p", strconv.Itoa(e.directPort), "root@" + e.directHost}}
}

func (e *env) pathC() path {
	return path{"C", []string{"-p", strconv.Itoa(e.gwPort), e.vps.TaskID + "@127.0.0.1"}}
}

func (e *env) paths() []path { return []path{e.pathA(), e.pathB(), e.pathC()} }

// setup starts host, agent, VPS and jump host. On error everything already
// started is stopped.
func setup(ctx context.Context, o options) (e *env, err error) {
	for _, bin := range []string{"ssh", "/usr/sbin/sshd"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not found: install openssh-client and openssh-server", bin)
		}
	}
	dir, err := os.MkdirTemp("", "kohakuriver-bench-")
	if err != nil {
		return nil, err
	}
	e = &env{dir: dir, nodeName: fmt.Sprintf("bench-%d", os.Getpid())}
	defer func() {
		if err != nil {
			e.close()
			e = nil
		}
	}()
	log := slog.New(slog.DiscardHandler)
	if o.verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}

	if err := e.newClientKey(); err != nil {
		return e, err
	}
	start := time.Now()
	host.TuneRuntime() // as the host daemon does
	e.host, err = host.New(host.Config{
		DataDir: filepath.Join(dir, "data"), APIAddr: "127.0.0.1:0", SSHAddr: "127.0.0.1:0",
		PortHost: "127.0.0.1", PortMin: o.portMin, PortMax: o.portMax, PublicHost: "127.0.0.1",
		DefaultImage: o.image, HeartbeatTimeout: 30 * time.Second, Logger: log.With("side", "host"),
		// Thousands of logins from one address must not trip the ban.
		Gateway: func(g *gateway.Config) { g.Throttle.MaxFailures = -1 },
	})
	if err != nil {
		return e, err
	}
	if err := e.host.Start(); err != nil {
		e.host.Close()
		e.host = nil
		return e, err
	}
	e.gwPort = e.host.SSHAddr().(*net.TCPAddr).Port
	tok, err := os.ReadFile(filepath.Join(dir, "data", host.AdminTokenFile))
	if err != nil {
		return e, err
	}
	e.admin = api.NewClient("http://"+e.host.APIAddr().String(), strings.TrimSpace(string(tok)), nil)

	if err := e.startAgent(ctx, log.With("side", "agent"), o.verbose, o.handoff); err != nil {
		return e, err
	}
	if err := e.createVPS(ctx); err != nil {
		return e, err
	}
	if err := e.startJump(ctx); err != nil {
		return e, err
	}
	if err := e.writeClientConfig(); err != nil {
		return e, err
	}
	// Every path must work before anything is timed.
	for _, p := range e.paths() {
		if _, err := sshRun(ctx, e.cfgDefault, p, 30*time.Second, "true"); err != nil {
			return e, fmt.Errorf("path %s does not work: %w", p.name, err)
		}
	}
	fmt.Printf("setup: host (GOMAXPROCS %d, GODEBUG %q), agent %s, VPS %s and jump sshd up in %s\n", runtime.GOMAXPROCS(0), os.Getenv("GODEBUG"),
		e.nodeName, e.vps.TaskID, time.Since(start).Round(time.Millisecond))
	return e, nil
}

func (e *env) newClientKey() error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := gossh.MarshalPrivateKey(priv, "")
	if err != nil {
		return err
	}
	e.keyPath = filepath.Join(e.dir, "id_ed25519")
	if err := os.WriteFile(e.keyPath, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	sp, err := gossh.NewPublicKey(pub)
	if err != nil {
		return err
	}
	e.signer, err = gossh.NewSignerFromKey(priv)
	if err != nil {
		return err
	}
	e.keyLine = strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sp))) + " bench"
	return nil
}

func (e *env) startAgent(ctx context.Context, log *slog.Logger, verbose, handoff bool) error {
	// This process keeps a Docker client of its own for the direct path's
	// address and the cleanup; the agent itself runs in a child process.
	rt, err := docker.New(docker.Options{NodeName: e.nodeName, Logger: log})
	if err != nil {
		return err
	}
	e.rt = rt
	socket := ""
	if handoff {
		socket = filepath.Join(e.dir, "relay.sock") // e.dir is private (MkdirTemp)
	}
	if e.agent, err = startAgentProc(e.nodeName, "http://"+e.host.APIAddr().String(), e.host.ClusterToken, socket, verbose); err != nil {
		return err
	}
	err = waitUntil(ctx, 30*time.Second, "agent "+e.nodeName+" online", func() bool {
		n, err := e.host.Store().Node(ctx, e.nodeName)
		return err == nil && n.Status == store.NodeOnline
	})
	if err != nil || !handoff {
		return err
	}
	if n, _ := e.host.Store().Node(ctx, e.nodeName); n.RelaySocket == "" {
		return errors.New("the agent reports no handoff socket (run with -v to see why, or -handoff=false to measure the TCP relay)")
	}
	return nil
}

// newVPS creates a VPS on the agent's node with the client key.
func (e *env) newVPS(ctx context.Context, name string) (store.VPS, error) {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	v, err := e.admin.CreateVPS(cctx, api.CreateVPSRequest{
		Name: name, Node: e.nodeName, KeyMode: store.KeyModeString, PublicKeys: []string{e.keyLine},
	})
	if err != nil {
		return v, fmt.Errorf("create vps %s: %w", name, err)
	}
	if v.Status != store.StatusRunning || len(v.HostKeys) == 0 {
		return v, fmt.Errorf("create vps %s: status %s, %d host keys: %s", name, v.Status, len(v.HostKeys), v.Message)
	}
	return v, nil
}

// addSessionVPSs makes sure there are n VPSs in all (the main one and
// n-1 extra) and returns their task ids.
func (e *env) addSessionVPSs(ctx context.Context, n int) ([]string, error) {
	for len(e.extra) < n-1 {
		v, err := e.newVPS(ctx, fmt.Sprintf("bench-%d", len(e.extra)+2))
		if v.TaskID != "" {
			e.extra = append(e.extra, v) // delete it in close even if it failed
		}
		if err != nil {
			return nil, err
		}
		info, err := e.rt.Inspect(ctx, v.TaskID)
		if err != nil {
			return nil, fmt.Errorf("inspect vps %s: %w", v.TaskID, err)
		}
		e.extraIDs = append(e.extraIDs, info.ContainerID)
	}
	ids := []string{e.vps.TaskID}
	for _, v := range e.extra[:n-1] {
		ids = append(ids, v.TaskID)
	}
	return ids, nil
}

func (e *env) createVPS(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	v, err := e.newVPS(cctx, "bench")
	if v.TaskID != "" {
		e.vps = v
	}
	if err != nil {
		return err
	}
	// The direct path: the container's address (or its published port on
	// a node that cannot reach container networks), where the agent's
	// relay dials the sshd when it may not enter the container's network
	// namespace, and where a user on the node reaches it.
	addr, err := e.rt.SSHAddr(cctx, v.TaskID)
	if err != nil {
		return fmt.Errorf("sshd address of %s: %w", v.TaskID, err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	e.directHost = host
	e.directPort, _ = strconv.Atoi(port)
	info, err := e.rt.Inspect(cctx, v.TaskID)
	if err != nil {
		return fmt.Errorf("inspect vps %s: %w", v.TaskID, err)
	}
	e.containerID = info.ContainerID
	return nil
}

// startJump runs an OpenSSH sshd on a free loopback port as the current
// user, trusting the client key, for ssh -J.
func (e *env) startJump(ctx context.Context) error {
	dir := filepath.Join(e.dir, "jump")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := gossh.MarshalPrivateKey(hostPriv, "")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "host_ed25519"), pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	hostSigner, err := gossh.NewSignerFromKey(hostPriv)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(e.keyLine+"\n"), 0o600); err != nil {
		return err
	}
	_ = os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	jumpHostKey := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(hostSigner.PublicKey())))
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s/host_ed25519
PidFile %s/sshd.pid
AuthorizedKeysFile %s/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
UseDNS no
LogLevel ERROR
MaxStartups 100:30:200
`, port, dir, dir, dir)
		cfgPath := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return err
		}
		logBuf := &lockedBuffer{}
		cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfgPath)
		cmd.Stderr = logBuf
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start jump sshd: %w", err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		addr := "127.0.0.1:" + strconv.Itoa(port)
		if err := waitBanner(ctx, addr, done, 10*time.Second); err != nil {
			_ = cmd.Process.Kill()
			<-done
			lastErr = fmt.Errorf("%w; sshd log: %s", err, logBuf.String())
			continue
		}
		e.jump, e.jumpDone, e.jumpLog, e.jumpPort = cmd, done, logBuf, port
		return e.writeKnownHosts(jumpHostKey)
	}
	return fmt.Errorf("jump sshd did not start: %w", lastErr)
}

// writeKnownHosts pins the VPS's host key (from the API) for the direct
// path (also the destination of B), the jump host's, and the gateway's.
func (e *env) writeKnownHosts(jumpHostKey string) error {
	var lines []string
	for _, k := range e.vps.HostKeys {
		lines = append(lines, knownHostsName(e.directHost, e.directPort)+" "+k)
	}
	lines = append(lines, fmt.Sprintf("[127.0.0.1]:%d %s", e.jumpPort, jumpHostKey))
	lines = append(lines, gateway.KnownHostsLines(e.host.HostKeys, fmt.Sprintf("[127.0.0.1]:%d", e.gwPort))...)
	e.known = filepath.Join(e.dir, "known_hosts")
	return os.WriteFile(e.known, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// writeClientConfig writes the two ssh_config files. ProxyJump's inner ssh
// gets the same -F file, so both hops of path B use these settings.
func (e *env) writeClientConfig() error {
	base := fmt.Sprintf(`Host *
  BatchMode yes
  StrictHostKeyChecking yes
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  UpdateHostKeys no
  IdentitiesOnly yes
  IdentityAgent none
  IdentityFile %s
  ControlMaster no
  ControlPath none
  ConnectTimeout 30
  LogLevel ERROR
`, e.known, e.keyPath)
	e.cfgDefault = filepath.Join(e.dir, "ssh_config")
	e.cfgGCM = filepath.Join(e.dir, "ssh_config_gcm")
	if err := os.WriteFile(e.cfgDefault, []byte(base), 0o600); err != nil {
		return err
	}
	return os.WriteFile(e.cfgGCM, []byte(base+"  Ciphers aes128-gcm@openssh.com\n"), 0o600)
}

// close stops and removes everything setup started, in reverse order. Safe
// on a partly set up env.
func (e *env) close() {
	if e.jump != nil {
		_ = e.jump.Process.Kill() // by PID: only the sshd we started
		<-e.jumpDone
		e.jump = nil
	}
	if e.admin != nil {
		for _, v := range append([]store.VPS{e.vps}, e.extra...) {
			if v.TaskID == "" {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			if err := e.admin.DeleteVPS(ctx, v.TaskID, true); err != nil {
				fmt.Fprintf(os.Stderr, "bench: delete vps %s: %v\n", v.TaskID, err)
			}
			cancel()
		}
	}
	if e.agent != nil {
		e.agent.stop()
		e.agent = nil
	}
	if e.rt != nil {
		// Whatever the API delete left: only containers of this run's node.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if infos, err := e.rt.List(ctx); err == nil {
			for _, in := range infos {
				if err := e.rt.Remove(ctx, in.TaskID); err != nil {
					fmt.Fprintf(os.Stderr, "bench: remove container of %s: %v\n", in.TaskID, err)
				}
			}
		}
		cancel()
		e.rt.Close()
		e.rt = nil
	}
	if e.host != nil {
		e.host.Close()
		e.host = nil
	}
	os.RemoveAll(e.dir)
}

// sshRun runs ssh -F cfg ARGS remote... with stdin from /dev/null and
// returns its stdout; the error quotes stderr.
func sshRun(ctx context.Context, cfg string, p path, timeout time.Duration, remote ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append([]string{"-F", cfg, "-n"}, p.args...)
	cmd := exec.CommandContext(ctx, "ssh", append(args, remote...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("ssh %s: %w: %s", strings.Join(p.args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitBanner waits until addr greets with an SSH banner, the process
// exits, or max passes.
func waitBanner(ctx context.Context, addr string, exited <-chan error, max time.Duration) error {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case err := <-exited:
			return fmt.Errorf("sshd exited: %v", err)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "SSH-2.0-") {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no SSH banner at %s", addr)
}

// waitUntil polls cond every 50ms until it holds, ctx ends or max passes.
func waitUntil(ctx context.Context, max time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(max)
	for !cond() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", max, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// knownHostsName is how ssh looks a host up in known_hosts: bare on port 22,
// [host]:port otherwise.
func knownHostsName(host string, port int) string {
	if port == 22 {
		return host
	}
	return fmt.Sprintf("[%s]:%d", host, port)
}
