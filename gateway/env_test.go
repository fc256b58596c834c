package gateway

// Test environment: a real OpenSSH sshd per "VPS" on 127.0.0.1, the gateway
// in process with an in-memory Directory, and helpers to drive the real
// OpenSSH client. Assumes /usr/sbin/sshd and ssh, scp, sftp on PATH (the
// tests skip without them unless KOHAKURIVER_REQUIRE_SSHD=1).

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/gateway/testport"
	"github.com/kohakuriver/kohakuriver/store"
)

// memDirectory is an in-memory Directory.
type memDirectory struct {
	mu       sync.Mutex
	vps      map[string]store.VPS
	nodes    map[string]store.Node
	watchers []chan store.Event
}

var _ Directory = (*memDirectory)(nil)

func newMemDirectory() *memDirectory {
	return &memDirectory{vps: map[string]store.VPS{}, nodes: map[string]store.Node{
		"node1": {Name: "node1", Status: store.NodeOnline},
	}}
}

func (d *memDirectory) put(v store.VPS) {
	d.mu.Lock()
	d.vps[v.TaskID] = v
	ws := append([]chan store.Event(nil), d.watchers...)
	d.mu.Unlock()
	for _, w := range ws {
		select {
		case w <- store.Event{Kind: store.EventVPSPut, VPS: v}:
		default:
		}
	}
}

func (d *memDirectory) update(id string, fn func(*store.VPS)) {
	d.mu.Lock()
	v := d.vps[id]
	d.mu.Unlock()
	fn(&v)
	d.put(v)
}

func (d *memDirectory) VPS(_ context.Context, ref string) (store.VPS, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.vps {
		if v.TaskID == ref || (v.Name != "" && v.Name == ref) {
			return v, nil
		}
	}
	return store.VPS{}, store.ErrNotFound
}

func (d *memDirectory) VPSByPort(_ context.Context, port int) (store.VPS, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.vps {
		if v.SSHPort == port {
			return v, nil
		}
	}
	return store.VPS{}, store.ErrNotFound
}

func (d *memDirectory) VPSByKey(_ context.Context, fp string) ([]store.VPS, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []store.VPS
	for _, v := range d.vps {
		if v.HasKey(fp) {
			out = append(out, v)
		}
	}
	return out, nil
}

func (d *memDirectory) ListVPS(context.Context) ([]store.VPS, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []store.VPS
	for _, v := range d.vps {
		out = append(out, v)
	}
	return out, nil
}

func (d *memDirectory) Node(_ context.Context, name string) (store.Node, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.nodes[name]
	if !ok {
		return store.Node{}, store.ErrNotFound
	}
	return n, nil
}

func (d *memDirectory) Watch(ctx context.Context) <-chan store.Event {
	ch := make(chan store.Event, 64)
	d.mu.Lock()
	d.watchers = append(d.watchers, ch)
	d.mu.Unlock()
	return ch
}

// directHop dials the test sshd of a VPS straight away.
type directHop struct {
	mu    sync.Mutex
	addrs map[string]string
	dials int
}

func (h *directHop) DialVPS(ctx context.Context, v store.VPS, _ store.Node) (net.Conn, error) {
	h.mu.Lock()
	addr, ok := h.addrs[v.TaskID]
	h.dials++
	h.mu.Unlock()
	if !ok {
		return nil, ErrVPSNotRunning
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSSHDUnreachable, err)
	}
	return c, nil
}

// sshd is a real OpenSSH server started for a test.
type sshd struct {
	addr    string
	hostKey string // authorized_keys format
	dir     string
}

func requireOpenSSH(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"/usr/sbin/sshd", "ssh", "scp", "sftp"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("KOHAKURIVER_REQUIRE_SSHD") == "1" {
				t.Fatalf("%s not found: install openssh-server and openssh-client", bin)
			}
			t.Skipf("%s not found: install openssh-server and openssh-client", bin)
		}
	}
}

func loginUser(t testing.TB) string {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

// startSSHD runs /usr/sbin/sshd -D on a free loopback port, trusting ca
// through a cert-authority line, as the agent configures a VPS.
func startSSHD(t testing.TB, ca gossh.PublicKey, extraConfig string) *sshd {
	t.Helper()
	requireOpenSSH(t)
	dir := t.TempDir()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostSigner, _ := gossh.NewSignerFromKey(hostPriv)
	writeKey(t, filepath.Join(dir, "host_ed25519"), hostPriv)
	ak := CertAuthorityLine(ca) + "\n"
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(ak), 0o600); err != nil {
		t.Fatal(err)
	}
	// The sessions' HOME is a directory of the test's, not the login
	// user's: bash run by sshd sources ~/.bashrc even for `ssh host cmd`,
	// and a machine's rc files are no part of what is tested here. They
	// can cost a minute per command: on the CI machines root's .bashrc
	// runs `pyenv init`, whose rehash waits up to 60 s for a lock that a
	// concurrent or killed session holds. sshd still starts sessions in
	// the login user's home directory (it uses the passwd entry for that).
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll("/run/sshd", 0o755)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := freePort(t)
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
LogLevel VERBOSE
Subsystem sftp internal-sftp
AllowTcpForwarding yes
AllowAgentForwarding yes
X11Forwarding yes
SetEnv HOME=%s
%s
`, port, dir, dir, dir, home, extraConfig)
		cfgPath := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		var logBuf syncBuffer
		cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfgPath)
		cmd.Stderr = &logBuf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		addr := "127.0.0.1:" + strconv.Itoa(port)
		if err := waitBanner(addr, exited, 10*time.Second); err != nil {
			_ = cmd.Process.Kill()
			lastErr = fmt.Errorf("%v; sshd log:\n%s", err, logBuf.String())
			continue
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("sshd %s log:\n%s", addr, logBuf.String())
			}
		})
		return &sshd{addr: addr, hostKey: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(hostSigner.PublicKey()))), dir: dir}
	}
	t.Fatalf("sshd did not start: %v", lastErr)
	return nil
}

func waitBanner(addr string, exited <-chan error, max time.Duration) error {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("sshd exited: %v", err)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 8)
			n, _ := c.Read(buf)
			c.Close()
			if bytes.HasPrefix(buf[:n], []byte("SSH-2.0")) {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no SSH banner at %s", addr)
}

func freePort(t testing.TB) int { return testport.Pick(t, testport.Gateway) }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func writeKey(t testing.TB, path string, priv any) {
	t.Helper()
	block, err := gossh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
}

// userKey is a client key pair on disk, for the ssh client's -i.
type userKey struct {
	path   string
	signer gossh.Signer
	auth   store.AuthorizedKey
}

func newUserKey(t testing.TB) userKey {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := gossh.NewSignerFromKey(priv)
	path := filepath.Join(t.TempDir(), "id_ed25519")
	writeKey(t, path, priv)
	ak, err := store.ParseAuthorizedKey(strings.TrimSpace(string(gossh.MarshalAuthorizedKey(signer.PublicKey()))) + " test")
	if err != nil {
		t.Fatal(err)
	}
	return userKey{path: path, signer: signer, auth: ak}
}

// testGateway is a gateway with its own CA and host keys over memDirectory.
type testGateway struct {
	srv       *Server
	dir       *memDirectory
	hop       *directHop
	ca        gossh.Signer
	hopKeys   *HopKeys
	hostKeys  []gossh.Signer
	knownHost string // known_hosts file pinning the gateway
	logs      *syncBuffer
}

func newTestGateway(t testing.TB, mutate func(*Config)) *testGateway {
	t.Helper()
	id, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	hostKeys, ca, err := Signers(id)
	if err != nil {
		t.Fatal(err)
	}
	hopKeys, err := NewHopKeys(id.UserCA)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	g := &testGateway{dir: newMemDirectory(), hop: &directHop{addrs: map[string]string{}}, ca: ca, hopKeys: hopKeys, hostKeys: hostKeys, logs: logs}
	cfg := Config{
		HopKeys:     hopKeys,
		Addr:        "127.0.0.1:0",
		PortHost:    "127.0.0.1",
		HostSigners: hostKeys,
		UserCA:      ca,
		Directory:   g.dir,
		Hop:         g.hop,
		Logger:      slogJSON(logs),
		PublicHost:  "127.0.0.1",
	}
	if mutate != nil {
		mutate(&cfg)
	}
	g.srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.srv.Close()
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	var pubs []gossh.PublicKey
	for _, h := range hostKeys {
		pubs = append(pubs, h.PublicKey())
	}
	g.knownHost = filepath.Join(t.TempDir(), "known_hosts")
	port := g.port()
	lines := KnownHostsLines(pubs, fmt.Sprintf("[127.0.0.1]:%d", port))
	// The same keys serve every VPS port: pin them for any port.
	lines = append(lines, KnownHostsLines(pubs, "[127.0.0.1]:*")...)
	if err := os.WriteFile(g.knownHost, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *testGateway) port() int { return g.srv.Addr().(*net.TCPAddr).Port }

// addVPS registers a running VPS served by a fresh sshd.
func (g *testGateway) addVPS(t testing.TB, name string, sshPort int, keys ...userKey) (store.VPS, *sshd) {
	t.Helper()
	return g.addVPSOn(t, name, sshPort, "", keys...)
}

// addVPSWithConfig is addVPS with extra sshd_config lines.
func (g *testGateway) addVPSWithConfig(t testing.TB, name, sshdConfig string, keys ...userKey) (store.VPS, *sshd) {
	t.Helper()
	return g.addVPSOn(t, name, 0, sshdConfig, keys...)
}

func (g *testGateway) addVPSOn(t testing.TB, name string, sshPort int, sshdConfig string, keys ...userKey) (store.VPS, *sshd) {
	t.Helper()
	d := startSSHD(t, g.ca.PublicKey(), sshdConfig)
	v := store.VPS{
		TaskID: store.NewTaskID(), Name: name, Owner: "alice", Node: "node1",
		Status: store.StatusRunning, SSHPort: sshPort, LoginUser: loginUser(t),
		HostKeys: []string{d.hostKey},
	}
	for _, k := range keys {
		v.Keys = append(v.Keys, k.auth)
	}
	g.hop.mu.Lock()
	g.hop.addrs[v.TaskID] = d.addr
	g.hop.mu.Unlock()
	g.dir.put(v)
	return v, d
}

// sshArgs returns the OpenSSH client arguments for the gateway.
func (g *testGateway) sshArgs(key userKey, port int, extra ...string) []string {
	args := []string{
		"-F", "/dev/null",
		"-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + g.knownHost,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "ConnectTimeout=20",
		"-i", key.path,
	}
	if port != 0 {
		args = append(args, "-p", strconv.Itoa(port))
	}
	return append(args, extra...)
}

// runSSH runs the real ssh client: ssh ARGS... and returns stdout, stderr
// and the exit code.
func runSSH(t testing.TB, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	return runCmd(t, stdin, "ssh", args...)
}

func runCmd(t testing.TB, stdin []byte, name string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%s: %v", name, err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

func execSSH(args ...string) *exec.Cmd { return exec.Command("ssh", args...) }

func waitPortListening(t testing.TB, s *Server, port int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !s.PortListening(port) {
		if time.Now().After(deadline) {
			t.Fatalf("gateway never listened on VPS port %d", port)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
