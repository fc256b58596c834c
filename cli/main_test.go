package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/gateway/host"
	"github.com/kohakuriver/kohakuriver/store"
)

// Commands start goroutines (spinners, forwards, HTTP transports, the
// in-process host); none may outlive a test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for a command goroutine and the test.
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

// user is one user's machine: a home directory, stdio and environment.
type user struct {
	t    *testing.T
	home string
	// Set before run.
	stdin         string
	stdinTerminal bool
	secret        string // what the terminal prompt reads
	ssh           string
	env           map[string]string
	now           time.Time
}

// result is one run of the CLI.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func newUser(t *testing.T) *user {
	t.Helper()
	return &user{t: t, home: t.TempDir(), env: map[string]string{}}
}

// envFor is the Env run gets; stdout and stderr go to the given buffers.
func (u *user) envFor(stdout, stderr *syncBuffer) *Env {
	env := &Env{
		Stdin: strings.NewReader(u.stdin), Stdout: stdout, Stderr: stderr,
		StdinTerminal: u.stdinTerminal,
		ReadSecret:    func() ([]byte, error) { return []byte(u.secret), nil },
		Home:          u.home, SSH: u.ssh,
		Getenv: func(k string) string { return u.env[k] },
	}
	if !u.now.IsZero() {
		env.Now = func() time.Time { return u.now }
	}
	return env
}

// run runs the CLI with args and returns what it printed.
func (u *user) run(args ...string) result {
	u.t.Helper()
	return u.runCtx(context.Background(), args...)
}

func (u *user) runCtx(ctx context.Context, args ...string) result {
	var stdout, stderr syncBuffer
	code := run(ctx, args, u.envFor(&stdout, &stderr))
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// mustRun runs the CLI and fails the test unless it exits 0.
func (u *user) mustRun(args ...string) result {
	u.t.Helper()
	r := u.run(args...)
	if r.code != 0 {
		u.t.Fatalf("kohakuriver %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// saveAuth writes auth.json as login would.
func (u *user) saveAuth(token string, port, sshPort int) {
	u.t.Helper()
	b, _ := json.Marshal(authFile{Token: token, Host: "127.0.0.1", Port: port, SSHPort: sshPort})
	dir := filepath.Join(u.home, ".kohakuriver")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		u.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "auth.json"), b, 0o600); err != nil {
		u.t.Fatal(err)
	}
}

// testHost is a real host (API, gateway, store) without agents.
type testHost struct {
	h                *host.Host
	adminToken       string
	apiPort, sshPort int
	portBase         int
}

var hostCount atomic.Int64

func startHost(t *testing.T) *testHost {
	t.Helper()
	return startHostWith(t, nil)
}

// startHostWith is startHost with mutate applied to the host's config.
func startHostWith(t *testing.T, mutate func(*host.Config)) *testHost {
	t.Helper()
	dir := t.TempDir()
	// Hosts of parallel tests (and of other test processes) get disjoint
	// blocks of per-VPS ports, below the ephemeral range (32768 up on
	// Linux) where outgoing connections could take them.
	slot := (os.Getpid()*37 + int(hostCount.Add(1))) % 1000
	base := 10000 + slot*10
	cfg := host.Config{
		DataDir: dir, APIAddr: "127.0.0.1:0", SSHAddr: "127.0.0.1:0", PortHost: "127.0.0.1",
		PortMin: base, PortMax: base + 9, PublicHost: "127.0.0.1",
	}
	if mutate != nil {
		mutate(&cfg)
	}
	h, err := host.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		h.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	tok, err := os.ReadFile(filepath.Join(dir, host.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return &testHost{
		h: h, adminToken: strings.TrimSpace(string(tok)), portBase: base,
		apiPort: h.APIAddr().(*net.TCPAddr).Port, sshPort: h.SSHAddr().(*net.TCPAddr).Port,
	}
}

// admin returns a user logged in to th as admin.
func (th *testHost) admin(t *testing.T) *user {
	u := newUser(t)
	u.saveAuth(th.adminToken, th.apiPort, th.sshPort)
	return u
}

// addNode records a node as if its agent had registered.
func (th *testHost) addNode(t *testing.T, name string, status store.NodeStatus, heartbeat time.Time) {
	t.Helper()
	_, err := th.h.Store().UpsertNode(context.Background(), name, func(n *store.Node) error {
		n.Address, n.Status, n.Cores, n.MemoryMB = "127.0.0.1:1", status, 4, 8192
		n.LastHeartbeat, n.RegisteredAt = heartbeat, heartbeat
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// addVPS stores a VPS record directly (no container behind it).
func (th *testHost) addVPS(t *testing.T, v store.VPS) store.VPS {
	t.Helper()
	if v.Owner == "" {
		v.Owner = "admin"
	}
	if v.Node == "" {
		v.Node = "n1"
	}
	if v.Status == "" {
		v.Status = store.StatusRunning
	}
	if v.KeyMode == "" {
		v.KeyMode = store.KeyModeString
	}
	v.Image = "kohakuriver/vps:latest"
	v, err := th.h.Store().CreateVPS(context.Background(), v)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// fakeAPI is an httptest host API whose VPS endpoints the test answers;
// it counts every request, to prove that refused input sent none.
type fakeAPI struct {
	srv      *httptest.Server
	mu       sync.Mutex
	requests []string // "METHOD PATH?QUERY"
	bodies   []string
}

// newFakeAPI serves GET /api/v1/gateway itself and everything else with h.
func newFakeAPI(t *testing.T, h http.HandlerFunc) *fakeAPI {
	f := &fakeAPI{}
	hostKey := newPublicKey(t, "gateway")
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body bytes.Buffer
		_, _ = body.ReadFrom(r.Body)
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.RequestURI())
		f.bodies = append(f.bodies, body.String())
		f.mu.Unlock()
		r.Body = http.NoBody
		if r.Method == http.MethodGet && r.URL.Path == "/api/v1/gateway" {
			writeJSON(w, http.StatusOK, api.GatewayInfo{HostKeys: []string{hostKey}, SSHPort: 8002})
			return
		}
		r.Body = nopCloser{bytes.NewReader(body.Bytes())}
		h(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func (f *fakeAPI) port() int { return f.srv.Listener.Addr().(*net.TCPAddr).Port }

func (f *fakeAPI) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// body returns the body of the first request whose "METHOD PATH" is call.
func (f *fakeAPI) body(call string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.requests {
		if r == call {
			return f.bodies[i]
		}
	}
	return ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeAPIError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

const testTaskID = "7291847561928374651"

// newPublicKey returns a fresh ed25519 public key line.
func newPublicKey(t *testing.T, comment string) string {
	t.Helper()
	_, line := newKeyPair(t, "", comment)
	return line
}

// newKeyPair makes an ed25519 key; with path it writes path (0600) and
// path.pub and returns the public line.
func newKeyPair(t *testing.T, path, comment string) (ed25519.PrivateKey, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := gossh.NewPublicKey(pub)
	line := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sp)))
	if comment != "" {
		line += " " + comment
	}
	if path != "" {
		block, _ := gossh.MarshalPrivateKey(priv, comment)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path+".pub", []byte(line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return priv, line
}

func fingerprintOf(t *testing.T, line string) string {
	t.Helper()
	k, err := store.ParseAuthorizedKey(line)
	if err != nil {
		t.Fatal(err)
	}
	return k.Fingerprint
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestHelpShowsExamples(t *testing.T) {
	t.Parallel()
	u := newUser(t)
	for _, args := range [][]string{
		{"--help"}, {"vps", "create", "--help"}, {"ssh", "--help"}, {"ssh", "connect", "--help"},
		{"ssh", "config", "--help"}, {"login", "--help"}, {"terminal", "exec", "--help"}, {"vps", "keys", "--help"},
	} {
		r := u.run(args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Examples:") {
			t.Errorf("%v: %s", args, r)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	u := newUser(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"vsp", "list"}, "unexpected argument vsp"},
		{"missing argument", []string{"vps", "status"}, "expected \"<task_id>\""},
		{"bad format", []string{"--format", "yaml", "vps", "list"}, "--format must be one of"},
		{"URL as host", []string{"-H", "http://x", "vps", "list"}, "give a host name"},
		{"option as host", []string{"--host=-oProxyCommand=sh", "vps", "list"}, "give a host name"},
		{"host with a line break", []string{"-H", "h\nHost *", "ssh", "config"}, "give a host name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := u.run(tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want an error with %q, got %s", tc.want, r)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	if r := newUser(t).run("version"); r.code != 0 || !strings.Contains(r.stdout, "kohakuriver "+Version) {
		t.Fatal(r)
	}
}
