package api

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

// keyWithSlash returns a public key whose fingerprint holds a '/', which
// must be path-escaped in DELETE .../keys/{fingerprint}.
func keyWithSlash(t *testing.T) string {
	for range 200 {
		k := newPublicKey(t, "slash")
		if strings.Contains(fingerprint(t, k), "/") {
			return k
		}
	}
	t.Fatal("no key with '/' in its fingerprint")
	return ""
}

func TestKeys(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.client("alice")
	v := e.createVPS(t, "alice", "box")
	first := v.Keys[0]
	k2, k3 := keyWithSlash(t), newPublicKey(t, "k3")

	keys, err := c.AddKeys(ctx, "box", []string{k2, first.Line, k3, k2})
	if err != nil {
		t.Fatalf("AddKeys: %v", err)
	}
	wantFPs := []string{first.Fingerprint, fingerprint(t, k2), fingerprint(t, k3)}
	if got := fps(keys); !slices.Equal(got, wantFPs) {
		t.Fatalf("keys after add = %v, want %v (deduped, in order)", got, wantFPs)
	}
	if got := fps(e.vps(t, "box").Keys); !slices.Equal(got, wantFPs) {
		t.Fatalf("stored keys = %v", got)
	}
	if got := e.agents.keysOf(v.TaskID); !slices.Equal(got, append(lines(keys), e.caLine)) {
		t.Fatalf("node got %q, want the keys and the CA line", got)
	}
	if listed, err := c.Keys(ctx, v.TaskID); err != nil || !slices.Equal(fps(listed), wantFPs) {
		t.Fatalf("Keys = %v, %v", fps(listed), err)
	}

	// Remove the key whose fingerprint has a '/'.
	keys, err = c.RemoveKey(ctx, "box", fingerprint(t, k2))
	if err != nil {
		t.Fatalf("RemoveKey: %v", err)
	}
	wantFPs = []string{first.Fingerprint, fingerprint(t, k3)}
	if !slices.Equal(fps(keys), wantFPs) || !slices.Equal(fps(e.vps(t, "box").Keys), wantFPs) {
		t.Fatalf("after remove: %v", fps(keys))
	}
	if got := e.agents.keysOf(v.TaskID); !slices.Equal(got, append(lines(keys), e.caLine)) {
		t.Fatalf("node got %q after remove", got)
	}
	// The "SHA256:" prefix may be left out.
	if _, err := c.RemoveKey(ctx, "box", strings.TrimPrefix(fingerprint(t, k3), "SHA256:")); err != nil {
		t.Fatalf("RemoveKey without prefix: %v", err)
	}
	if _, err := c.RemoveKey(ctx, "box", fingerprint(t, k3)); StatusOf(err) != http.StatusNotFound {
		t.Fatalf("removing a missing key: %v, want 404", err)
	}

	// Bad input changes nothing.
	for _, body := range []string{`{"public_keys":[]}`, `{"public_keys":["nope"]}`, `{"keys":["x"]}`} {
		if status, resp := e.do(t, "alice", "POST", "/api/v1/vps/box/keys", body); status != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", body, status, resp)
		}
	}
	if got := fps(e.vps(t, "box").Keys); !slices.Equal(got, []string{first.Fingerprint}) {
		t.Fatalf("bad requests changed keys: %v", got)
	}
}

// TestKeysStoreFirst: the store changes even when the node fails, because
// the gateway reads keys from the store at each login; the answer says so.
func TestKeysStoreFirst(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := e.createVPS(t, "alice", "box")
	e.agents.set(func(f *fakeAgents) { f.fail["setkeys"] = errors.New("exec failed") })
	_, err := e.client("alice").RemoveKey(ctx, "box", v.Keys[0].Fingerprint)
	if StatusOf(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "removed at the gateway already") {
		t.Fatalf("RemoveKey with failing node: %v", err)
	}
	if got := e.vps(t, "box").Keys; len(got) != 0 {
		t.Fatalf("key still stored: %v", got)
	}
	if vs, _ := e.st.VPSByKey(ctx, v.Keys[0].Fingerprint); len(vs) != 0 {
		t.Fatal("key still routes to the VPS")
	}

	// A stopped VPS: store only, no node call; the keys go at next start.
	e.agents.set(func(f *fakeAgents) { delete(f.fail, "setkeys") })
	if _, err := e.client("alice").StopVPS(ctx, "box"); err != nil {
		t.Fatal(err)
	}
	calls := len(e.agents.called("setkeys"))
	k := newPublicKey(t, "")
	if _, err := e.client("alice").AddKeys(ctx, "box", []string{k}); err != nil {
		t.Fatalf("AddKeys on stopped VPS: %v", err)
	}
	if len(e.agents.called("setkeys")) != calls {
		t.Fatal("keys pushed to a stopped VPS")
	}
	if _, err := e.client("alice").StartVPS(ctx, "box"); err != nil {
		t.Fatal(err)
	}
	if got := e.agents.keysOf(v.TaskID); !slices.Equal(got, []string{strings.TrimSpace(k), e.caLine}) {
		t.Fatalf("keys after start = %q", got)
	}
}

func TestKeysLimit(t *testing.T) {
	e := newEnv(t)
	e.createVPS(t, "alice", "box")
	var many []string
	for range maxKeys {
		many = append(many, newPublicKey(t, ""))
	}
	_, err := e.client("alice").AddKeys(context.Background(), "box", many)
	if StatusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("adding past the limit: %v", err)
	}
	if n := len(e.vps(t, "box").Keys); n != 1 {
		t.Fatalf("%d keys stored", n)
	}
}

func fps(keys []store.AuthorizedKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.Fingerprint)
	}
	return out
}

func lines(keys []store.AuthorizedKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.Line)
	}
	return out
}
