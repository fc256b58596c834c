package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/store"
)

// userEndpoints lists every bearer-authenticated endpoint with a path that
// exists in the env after setupOwned ({ref} = alice's VPS).
func userEndpoints(ref, fp string) []struct{ method, path, body string } {
	return []struct{ method, path, body string }{
		{"GET", "/api/v1/whoami", ""},
		{"GET", "/api/v1/gateway", ""},
		{"POST", "/api/v1/users", `{"name":"carol"}`},
		{"GET", "/api/v1/users", ""},
		{"DELETE", "/api/v1/users/bob", ""},
		{"POST", "/api/v1/vps", `{"key_mode":"none"}`},
		{"GET", "/api/v1/vps", ""},
		{"GET", "/api/v1/vps/" + ref, ""},
		{"POST", "/api/v1/vps/" + ref + "/stop", ""},
		{"POST", "/api/v1/vps/" + ref + "/start", ""},
		{"POST", "/api/v1/vps/" + ref + "/restart", ""},
		{"DELETE", "/api/v1/vps/" + ref, ""},
		{"GET", "/api/v1/vps/" + ref + "/keys", ""},
		{"POST", "/api/v1/vps/" + ref + "/keys", `{"public_keys":[]}`},
		{"DELETE", "/api/v1/vps/" + ref + "/keys/" + url.PathEscape(fp), ""},
		{"POST", "/api/v1/vps/" + ref + "/exec", `{"cmd":["true"]}`},
		{"GET", "/api/v1/nodes", ""},
		{"GET", "/api/v1/nodes/n1", ""},
		{"GET", "/api/v1/no-such-endpoint", ""},
	}
}

func TestAuthRequired(t *testing.T) {
	e := newEnv(t)
	v := e.createVPS(t, "alice", "box")
	headers := []struct {
		name, value string
	}{
		{"no header", ""},
		{"empty bearer", "Bearer "},
		{"wrong scheme", "Basic " + e.tokens["alice"]},
		{"unknown token", "Bearer " + NewToken()},
		{"token with junk", "Bearer " + e.tokens["alice"] + "x"},
		{"huge token", "Bearer " + strings.Repeat("a", 600)},
	}
	for _, ep := range userEndpoints(v.Name, v.Keys[0].Fingerprint) {
		for _, h := range headers {
			t.Run(ep.method+" "+ep.path+"/"+h.name, func(t *testing.T) {
				req, _ := http.NewRequest(ep.method, e.ts.URL+ep.path, strings.NewReader(ep.body))
				if h.value != "" {
					req.Header.Set("Authorization", h.value)
				}
				resp, err := e.ts.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var eb errorBody
				_ = json.NewDecoder(resp.Body).Decode(&eb)
				if resp.StatusCode != http.StatusUnauthorized || eb.Error == "" {
					t.Fatalf("status %d %q, want 401 with a message", resp.StatusCode, eb.Error)
				}
				if resp.Header.Get("WWW-Authenticate") == "" {
					t.Error("no WWW-Authenticate header")
				}
			})
		}
	}
	// Nothing happened to the VPS.
	if got := e.vps(t, v.TaskID); got.Status != store.StatusRunning || len(e.agents.called("stop")) != 0 {
		t.Fatalf("VPS changed by unauthenticated requests: %+v", got)
	}
}

func TestHealthzNeedsNoToken(t *testing.T) {
	e := newEnv(t)
	if status, body := e.do(t, "", "GET", "/healthz", ""); status != 200 || !strings.Contains(body, "ok") {
		t.Fatalf("healthz = %d %s", status, body)
	}
	if err := NewClient(e.ts.URL, "", nil).Health(context.Background()); err != nil {
		t.Fatalf("Health: %v", err)
	}
}

func TestAgentEndpointsRequireHMAC(t *testing.T) {
	e := newEnv(t)
	body := []byte(`{"name":"n2","address":"10.0.0.2:8001","cores":4,"memory_mb":1024,"vps":[]}`)
	for _, path := range []string{"/api/v1/agent/register", "/api/v1/agent/heartbeat"} {
		tests := []struct {
			name string
			auth func(r *http.Request)
		}{
			{"none", func(r *http.Request) {}},
			{"admin bearer token", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+e.tokens["admin"]) }},
			{"cluster token as bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testClusterToken) }},
			{"wrong cluster token", func(r *http.Request) { clusterauth.Sign(r, "another-cluster-token-of-enough-length", body) }},
			{"signature over another body", func(r *http.Request) { clusterauth.Sign(r, testClusterToken, []byte(`{}`)) }},
			{"signed for another path", func(r *http.Request) {
				other, _ := http.NewRequest("POST", e.ts.URL+"/api/v1/agent/other", nil)
				clusterauth.Sign(other, testClusterToken, body)
				r.Header.Set("Authorization", other.Header.Get("Authorization"))
			}},
		}
		for _, tt := range tests {
			t.Run(path+"/"+tt.name, func(t *testing.T) {
				req, _ := http.NewRequest("POST", e.ts.URL+path, bytes.NewReader(body))
				tt.auth(req)
				resp, err := e.ts.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("status %d, want 401", resp.StatusCode)
				}
			})
		}
	}
	if _, err := e.st.Node(context.Background(), "n2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("refused requests registered the node: %v", err)
	}
	// A replayed good request is refused too.
	req, _ := http.NewRequest("POST", e.ts.URL+"/api/v1/agent/register", bytes.NewReader(body))
	clusterauth.Sign(req, testClusterToken, body)
	auth := req.Header.Get("Authorization")
	for i, want := range []int{200, 401} {
		r, _ := http.NewRequest("POST", e.ts.URL+"/api/v1/agent/register", bytes.NewReader(body))
		r.Header.Set("Authorization", auth)
		resp, err := e.ts.Client().Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("attempt %d: status %d, want %d", i, resp.StatusCode, want)
		}
	}
}

func TestAdminOnly(t *testing.T) {
	e := newEnv(t)
	for _, ep := range []struct{ method, path, body string }{
		{"POST", "/api/v1/users", `{"name":"carol"}`},
		{"GET", "/api/v1/users", ""},
		{"DELETE", "/api/v1/users/bob", ""},
	} {
		t.Run(ep.method+" "+ep.path, func(t *testing.T) {
			status, body := e.do(t, "alice", ep.method, ep.path, ep.body)
			if status != http.StatusForbidden || !strings.Contains(errBody(t, body), "admin") {
				t.Fatalf("alice: %d %s, want 403", status, body)
			}
		})
	}
	if _, err := e.st.User(context.Background(), "carol"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("a non-admin created a user")
	}
	if _, err := e.st.User(context.Background(), "bob"); err != nil {
		t.Fatal("a non-admin deleted a user")
	}
}

// TestOwnership: bob cannot see or touch alice's VPS, and is told exactly
// what he would be told about a VPS that does not exist; the admin can.
func TestOwnership(t *testing.T) {
	e := newEnv(t)
	v := e.createVPS(t, "alice", "box")
	fp := v.Keys[0].Fingerprint
	newKey := newPublicKey(t, "")
	ops := []struct {
		name, method, suffix, body string
	}{
		{"get", "GET", "", ""},
		{"stop", "POST", "/stop", ""},
		{"start", "POST", "/start", ""},
		{"restart", "POST", "/restart", ""},
		{"keys", "GET", "/keys", ""},
		{"add key", "POST", "/keys", `{"public_keys":["` + newKey + `"]}`},
		{"remove key", "DELETE", "/keys/" + url.PathEscape(fp), ""},
		{"exec", "POST", "/exec", `{"cmd":["id"]}`},
		{"delete", "DELETE", "", ""},
	}
	for _, op := range ops {
		for _, ref := range []string{v.Name, v.TaskID} {
			t.Run(op.name+"/"+ref, func(t *testing.T) {
				status, body := e.do(t, "bob", op.method, "/api/v1/vps/"+ref+op.suffix, op.body)
				if status != http.StatusNotFound {
					t.Fatalf("bob: %d %s, want 404", status, body)
				}
				// Same answer as for a VPS that does not exist.
				missing := "nope-" + ref[:3]
				_, mbody := e.do(t, "bob", op.method, "/api/v1/vps/"+missing+op.suffix, op.body)
				if got, want := errBody(t, body), strings.ReplaceAll(errBody(t, mbody), missing, ref); got != want {
					t.Fatalf("bob's answer %q differs from a missing VPS's %q", got, want)
				}
			})
		}
	}
	if list, err := e.client("bob").ListVPS(context.Background()); err != nil || len(list) != 0 {
		t.Fatalf("bob's list = %v, %v; want empty", list, err)
	}
	if calls := e.agents.allCalls(); len(calls) != 1 { // alice's create only
		t.Fatalf("bob's requests reached the node: %v", calls)
	}
	got := e.vps(t, v.TaskID)
	if got.Status != store.StatusRunning || len(got.Keys) != 1 {
		t.Fatalf("bob changed alice's VPS: %+v", got)
	}

	// The admin sees and acts on it.
	ctx := context.Background()
	admin := e.client("admin")
	if list, err := admin.ListVPS(ctx); err != nil || len(list) != 1 {
		t.Fatalf("admin list = %v, %v", list, err)
	}
	if _, err := admin.Keys(ctx, v.Name); err != nil {
		t.Fatalf("admin keys: %v", err)
	}
	if code, err := admin.Exec(ctx, v.Name, []string{"true"}, nil, nil, nil); err != nil || code != 0 {
		t.Fatalf("admin exec = %d, %v", code, err)
	}
	if s, err := admin.StopVPS(ctx, v.Name); err != nil || s.Status != store.StatusStopped {
		t.Fatalf("admin stop = %v, %v", s.Status, err)
	}
	if err := admin.DeleteVPS(ctx, v.TaskID, false); err != nil {
		t.Fatalf("admin delete: %v", err)
	}
}

func TestEnsureAdmin(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "admin.token")
	logger, logs := testLogger(t, func() []string { return nil })

	created, err := EnsureAdminWithLogger(ctx, st, path, logger)
	if err != nil || !created {
		t.Fatalf("first EnsureAdmin = %v, %v; want created", created, err)
	}
	assertMode(t, path, 0o600)
	assertMode(t, dir, 0o700|os.ModeDir)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(data))
	u, err := st.UserByTokenHash(ctx, HashToken(token))
	if err != nil || u.Name != AdminUser || !u.Admin {
		t.Fatalf("token file's token belongs to %+v, %v; want the admin", u, err)
	}
	if strings.Contains(logs.String(), token) {
		t.Fatal("the admin token was logged")
	}

	created, err = EnsureAdminWithLogger(ctx, st, path, logger)
	if err != nil || created {
		t.Fatalf("second EnsureAdmin = %v, %v; want nothing done", created, err)
	}
	if again, _ := os.ReadFile(path); string(again) != string(data) {
		t.Fatal("second EnsureAdmin rewrote the token file")
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	created, err = EnsureAdminWithLogger(ctx, st, path, logger)
	if err != nil || created {
		t.Fatalf("EnsureAdmin without file = %v, %v; want nothing done", created, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("EnsureAdmin wrote a token file for an existing admin")
	}
	if !strings.Contains(logs.String(), "token file is missing") {
		t.Fatalf("missing token file not logged:\n%s", logs)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != want {
		t.Fatalf("%s: mode %v, want %v", path, fi.Mode(), want)
	}
}
