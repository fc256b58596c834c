package api

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

func TestUsers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.client("admin")

	nu, err := admin.CreateUser(ctx, "carol", false)
	if err != nil || nu.Name != "carol" || nu.Admin || len(nu.Token) != 47 || !strings.HasPrefix(nu.Token, "krt_") {
		t.Fatalf("CreateUser = %+v, %v", nu, err)
	}
	u, err := e.st.User(ctx, "carol")
	if err != nil || u.TokenHash != HashToken(nu.Token) {
		t.Fatalf("stored user = %+v, %v", u, err)
	}
	e.addClient("carol", nu.Token)
	if who, err := e.client("carol").Whoami(ctx); err != nil || who != (Whoami{Name: "carol"}) {
		t.Fatalf("carol's whoami = %+v, %v", who, err)
	}
	if who, err := admin.Whoami(ctx); err != nil || who != (Whoami{Name: "admin", Admin: true}) {
		t.Fatalf("admin's whoami = %+v, %v", who, err)
	}

	tests := []struct {
		name, user, method, path, body string
		status                         int
	}{
		{"duplicate", "admin", "POST", "/api/v1/users", `{"name":"carol"}`, 409},
		{"bad name", "admin", "POST", "/api/v1/users", `{"name":"Carol!"}`, 400},
		{"unknown field", "admin", "POST", "/api/v1/users", `{"name":"dave","token":"x"}`, 400},
		{"delete self", "admin", "DELETE", "/api/v1/users/admin", ``, 409},
		{"delete missing", "admin", "DELETE", "/api/v1/users/zed", ``, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if status, body := e.do(t, tt.user, tt.method, tt.path, tt.body); status != tt.status {
				t.Fatalf("%d %s, want %d", status, body, tt.status)
			}
		})
	}

	list, err := admin.Users(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range list {
		names = append(names, u.Name)
	}
	if !slices.Equal(names, []string{"admin", "alice", "bob", "carol"}) {
		t.Fatalf("users = %v", names)
	}
	if status, body := e.do(t, "admin", "GET", "/api/v1/users", ""); status != 200 || strings.Contains(body, "token") {
		t.Fatalf("user list leaks token hashes: %s", body)
	}

	// A user who owns VPSs cannot be deleted; without them, yes, and the
	// token stops working at once.
	e.createVPS(t, "carol", "cbox")
	if err := admin.DeleteUser(ctx, "carol"); StatusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), "owns 1 VPS") {
		t.Fatalf("delete owner: %v", err)
	}
	if err := e.client("carol").DeleteVPS(ctx, "cbox", false); err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteUser(ctx, "carol"); err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	if _, err := e.client("carol").Whoami(ctx); StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("deleted user's token: %v, want 401", err)
	}
}

func TestGatewayInfo(t *testing.T) {
	e := newEnv(t)
	gw, err := e.client("bob").Gateway(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(gw.HostKeys) != 1 || !strings.HasPrefix(gw.HostKeys[0], "ssh-ed25519 ") || gw.SSHPort != 8002 || gw.PublicHost != "gw.example" {
		t.Fatalf("gateway info = %+v", gw)
	}
}

func TestNewServerConfig(t *testing.T) {
	st := openStore(t)
	ok := Config{Store: st, Agents: newFakeAgents(t), ClusterToken: testClusterToken, CertAuthorityLine: "cert-authority ssh-ed25519 AAAA"}
	tests := []struct {
		name string
		mut  func(c *Config)
		ok   bool
	}{
		{"ok", func(c *Config) {}, true},
		{"no store", func(c *Config) { c.Store = nil }, false},
		{"no agents", func(c *Config) { c.Agents = nil }, false},
		{"no token", func(c *Config) { c.ClusterToken = "" }, false},
		{"short token", func(c *Config) { c.ClusterToken = "secret" }, false},
		{"no CA line", func(c *Config) { c.CertAuthorityLine = "" }, false},
		{"CA line without marker", func(c *Config) { c.CertAuthorityLine = "ssh-ed25519 AAAA" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mut(&c)
			srv, err := NewServer(c)
			if (err == nil) != tt.ok {
				t.Fatalf("NewServer = %v, want ok %v", err, tt.ok)
			}
			if err != nil && strings.Contains(err.Error(), c.ClusterToken) && c.ClusterToken != "" {
				t.Fatal("error contains the token")
			}
			if srv != nil && (srv.hbTimeout != DefaultHeartbeatTimeout || srv.defaultImage != DefaultImage || srv.gateway.SSHPort != DefaultGatewaySSHPort) {
				t.Fatalf("defaults not applied: %+v", srv)
			}
		})
	}
}

func TestNewHTTPServer(t *testing.T) {
	hs := NewHTTPServer(":8000", http.NotFoundHandler())
	if hs.ReadHeaderTimeout == 0 || hs.ReadTimeout == 0 || hs.IdleTimeout == 0 || hs.MaxHeaderBytes == 0 {
		t.Fatalf("timeouts not set: %+v", hs)
	}
	if hs.WriteTimeout != 0 {
		t.Fatal("WriteTimeout would cut exec streams and long creates")
	}
}

// TestPanicAnswered: a panic in a handler (here in the node agent) is a
// 500 JSON answer naming the request id, not a dropped connection.
func TestPanicAnswered(t *testing.T) {
	e := newEnv(t)
	e.createVPS(t, "alice", "box")
	e.agents.set(func(f *fakeAgents) {
		f.exec = func(context.Context, []string, io.Reader, io.Writer, io.Writer) (int, error) {
			panic("bug")
		}
	})
	status, body := e.do(t, "alice", "POST", "/api/v1/vps/box/exec", `{"cmd":["id"]}`)
	if status != http.StatusInternalServerError || !strings.Contains(errBody(t, body), "request id") {
		t.Fatalf("%d %s, want 500 with a request id", status, body)
	}
	if !strings.Contains(e.logs.String(), "handler panic") {
		t.Fatal("panic not logged")
	}
}

// pausedStore holds the first call of the method named at until proceed
// is closed, after telling entered.
type pausedStore struct {
	store.Store
	at      string // "CreateVPS" or "Node"
	entered chan struct{}
	proceed chan struct{}
}

func (s *pausedStore) hold(method string) {
	if method == s.at {
		s.entered <- struct{}{}
		<-s.proceed
	}
}

func (s *pausedStore) CreateVPS(ctx context.Context, v store.VPS) (store.VPS, error) {
	s.hold("CreateVPS")
	return s.Store.CreateVPS(ctx, v)
}

func (s *pausedStore) Node(ctx context.Context, name string) (store.Node, error) {
	s.hold("Node")
	return s.Store.Node(ctx, name)
}

// TestDeleteUserDuringCreate: a user deleted while one of their VPSs is
// being created must not leave that VPS behind without its owner. Held
// inside the store, after its user check, the create makes the deletion
// wait, and the deletion then refuses (the user owns a VPS by then); held
// before that (choosing its node), the create lets the deletion through and
// then refuses itself.
func TestDeleteUserDuringCreate(t *testing.T) {
	tests := []struct {
		at                     string
		wantCreate, wantDelete int // HTTP status; 0 = success
		wantUser               bool
		wantOwned              int
	}{
		{at: "CreateVPS", wantCreate: 0, wantDelete: http.StatusConflict, wantUser: true, wantOwned: 1},
		{at: "Node", wantCreate: http.StatusUnauthorized, wantDelete: 0, wantUser: false, wantOwned: 0},
	}
	for _, tt := range tests {
		t.Run("held in "+tt.at, func(t *testing.T) {
			paused := &pausedStore{at: tt.at, entered: make(chan struct{}, 1), proceed: make(chan struct{})}
			e := newEnvWithStore(t, func(st store.Store) store.Store { paused.Store = st; return paused })
			ctx := context.Background()
			admin := e.client("admin")
			nu, err := admin.CreateUser(ctx, "carol", false)
			if err != nil {
				t.Fatal(err)
			}
			e.addClient("carol", nu.Token)

			created := make(chan error, 1)
			go func() {
				_, err := e.client("carol").CreateVPS(ctx, CreateVPSRequest{
					Name: "racing", Node: "n1", KeyMode: store.KeyModeUpload, PublicKeys: []string{newPublicKey(t, "carol@laptop")},
				})
				created <- err
			}()
			select {
			case <-paused.entered:
			case err := <-created:
				t.Fatalf("create returned before reaching %s: %v", tt.at, err)
			case <-time.After(20 * time.Second):
				t.Fatalf("create never reached %s", tt.at)
			}
			deleted := make(chan error, 1)
			go func() { deleted <- admin.DeleteUser(ctx, "carol") }()
			// Give a deletion that does not wait for the create the time
			// to finish; one that waits stays blocked however long this is.
			select {
			case err := <-deleted:
				deleted <- err
			case <-time.After(300 * time.Millisecond):
			}
			close(paused.proceed)

			var createErr, deleteErr error
			for _, w := range []struct {
				what string
				ch   chan error
				err  *error
			}{{"create", created, &createErr}, {"delete", deleted, &deleteErr}} {
				select {
				case *w.err = <-w.ch:
				case <-time.After(20 * time.Second):
					t.Fatalf("%s never returned", w.what)
				}
			}
			owned := 0
			all, err := e.st.ListVPS(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range all {
				if v.Owner == "carol" {
					owned++
				}
			}
			_, userErr := e.st.User(ctx, "carol")
			if userErr != nil && owned > 0 {
				t.Fatalf("user deleted (%v) while the create went on (%v): %d VPS(s) left without their owner", deleteErr, createErr, owned)
			}
			status := func(err error) int {
				if err == nil {
					return 0
				}
				return StatusOf(err)
			}
			if status(createErr) != tt.wantCreate || status(deleteErr) != tt.wantDelete || (userErr == nil) != tt.wantUser || owned != tt.wantOwned {
				t.Fatalf("create: %v; delete: %v; user: %v; carol's VPSs: %d; want create %d, delete %d, user kept %v, %d VPS(s)",
					createErr, deleteErr, userErr, owned, tt.wantCreate, tt.wantDelete, tt.wantUser, tt.wantOwned)
			}
			if tt.wantCreate == http.StatusUnauthorized && !strings.Contains(createErr.Error(), "was deleted") {
				t.Fatalf("create's refusal does not say why: %v", createErr)
			}
		})
	}
}
