package api

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
	"github.com/kohakuriver/kohakuriver/store/embedded"
)

// RunNodeMonitor and exec streams start goroutines; none may outlive a test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testClusterToken = "test-cluster-token-0123456789abcdef-0123"

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// clock is an injectable now func.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a Server on a real embedded store and a fake NodeAgent, served
// over a real socket, with an admin and two ordinary users.
type env struct {
	st      store.Store
	agents  *fakeAgents
	srv     *Server
	ts      *httptest.Server
	clock   *clock
	caLine  string
	tokens  map[string]string // user name -> token
	clients map[string]*Client
	dataDir string
	logs    *logBuffer
}

// newEnv starts an env with one online node "n1". Close is registered
// with tb.Cleanup.
func newEnv(tb testing.TB) *env { return newEnvWithStore(tb, nil) }

// newEnvWithStore is newEnv with the Server's store wrapped by wrap (nil:
// not wrapped); env.st is the embedded store itself.
func newEnvWithStore(tb testing.TB, wrap func(store.Store) store.Store) *env {
	tb.Helper()
	dir := tb.TempDir()
	db := openStore(tb)
	var served store.Store = db
	if wrap != nil {
		served = wrap(db)
	}
	var err error
	e := &env{
		st:      db,
		agents:  newFakeAgents(tb),
		clock:   &clock{t: t0},
		caLine:  "cert-authority " + newPublicKey(tb, "") + " kohakuriver-gateway",
		tokens:  map[string]string{},
		clients: map[string]*Client{},
		dataDir: dir,
	}
	var logger *slog.Logger
	logger, e.logs = testLogger(tb, func() []string {
		s := []string{testClusterToken}
		for _, t := range e.tokens {
			s = append(s, t)
		}
		return s
	})
	e.srv, err = NewServer(Config{
		Store: served, Agents: e.agents, ClusterToken: testClusterToken, CertAuthorityLine: e.caLine,
		GatewayHostKeys: []string{newPublicKey(tb, "")}, GatewaySSHPort: 8002, PublicHost: "gw.example",
		Now: e.clock.now, Logger: logger,
	})
	if err != nil {
		tb.Fatalf("NewServer: %v", err)
	}
	e.ts = httptest.NewServer(e.srv)
	tb.Cleanup(e.ts.Close)

	ctx := context.Background()
	if _, err := EnsureAdmin(ctx, db, filepath.Join(dir, "admin.token")); err != nil {
		tb.Fatalf("EnsureAdmin: %v", err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		tb.Fatal(err)
	}
	e.addClient("admin", strings.TrimSpace(string(tok)))
	for _, name := range []string{"alice", "bob"} {
		tok := NewToken()
		if _, err := db.CreateUser(ctx, store.User{Name: name, TokenHash: HashToken(tok)}); err != nil {
			tb.Fatal(err)
		}
		e.addClient(name, tok)
	}
	e.addNode(tb, "n1", store.NodeOnline)
	return e
}

// openStore opens a fresh embedded store in tb.TempDir, closed at cleanup.
func openStore(tb testing.TB) *embedded.DB {
	tb.Helper()
	db, err := embedded.Open(filepath.Join(tb.TempDir(), "state.db"), nil)
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() {
		if err := db.Close(); err != nil {
			tb.Errorf("close store: %v", err)
		}
	})
	return db
}

func (e *env) addClient(name, token string) {
	e.tokens[name] = token
	e.clients[name] = NewClient(e.ts.URL, token, e.ts.Client())
}

func (e *env) client(name string) *Client { return e.clients[name] }

func (e *env) addNode(tb testing.TB, name string, status store.NodeStatus) {
	tb.Helper()
	_, err := e.st.UpsertNode(context.Background(), name, func(n *store.Node) error {
		n.Address, n.Status, n.Cores, n.MemoryMB = "127.0.0.1:8001", status, 8, 16384
		n.LastHeartbeat = e.clock.now()
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// do sends a raw request as user ("" = no token) and returns status and
// body.
func (e *env) do(tb testing.TB, user, method, path, body string) (int, string) {
	tb.Helper()
	req, err := http.NewRequest(method, e.ts.URL+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if user != "" {
		req.Header.Set("Authorization", "Bearer "+e.tokens[user])
	}
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// createVPS creates a VPS for user through the Client with one fresh key.
func (e *env) createVPS(tb testing.TB, user, name string) store.VPS {
	tb.Helper()
	v, err := e.client(user).CreateVPS(context.Background(), CreateVPSRequest{
		Name: name, KeyMode: store.KeyModeUpload, PublicKeys: []string{newPublicKey(tb, user+"@laptop")},
	})
	if err != nil {
		tb.Fatalf("CreateVPS(%s): %v", name, err)
	}
	return v
}

func (e *env) vps(tb testing.TB, ref string) store.VPS {
	tb.Helper()
	v, err := e.st.VPS(context.Background(), ref)
	if err != nil {
		tb.Fatalf("store VPS(%s): %v", ref, err)
	}
	return v
}

func (e *env) countVPS(tb testing.TB) int {
	tb.Helper()
	all, err := e.st.ListVPS(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return len(all)
}

// newPublicKey returns a fresh ed25519 public key as an authorized_keys line.
func newPublicKey(tb testing.TB, comment string) string {
	tb.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	sp, err := gossh.NewPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	line := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sp)))
	if comment != "" {
		line += " " + comment
	}
	return line
}

func fingerprint(tb testing.TB, line string) string {
	tb.Helper()
	k, err := store.ParseAuthorizedKey(line)
	if err != nil {
		tb.Fatal(err)
	}
	return k.Fingerprint
}

// errBody decodes an {"error": ...} answer.
func errBody(tb testing.TB, body string) string {
	tb.Helper()
	var eb errorBody
	if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error == "" {
		tb.Fatalf("answer %q is not an error body", body)
	}
	return eb.Error
}

// logBuffer collects log output; tests check it holds no secrets.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Reset()
}
