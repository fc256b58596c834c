package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

// TestVPSKeys runs against a stopped VPS: key changes are stored and
// reach the container at its next start, so no node is needed.
func TestVPSKeys(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	first := newPublicKey(t, "first")
	k, _ := store.ParseAuthorizedKey(first)
	th.addVPS(t, store.VPS{Name: "web", Status: store.StatusStopped, Keys: []store.AuthorizedKey{k}})
	u := th.admin(t)

	keys := func() []store.AuthorizedKey {
		t.Helper()
		r := u.mustRun("vps", "keys", "web", "--format", "json") // list is the default
		var ks []store.AuthorizedKey
		if err := json.Unmarshal([]byte(r.stdout), &ks); err != nil {
			t.Fatalf("%v: %s", err, r.stdout)
		}
		return ks
	}

	second := filepath.Join(u.home, "second")
	_, secondLine := newKeyPair(t, second, "second")
	third := newPublicKey(t, "third")
	r := u.mustRun("vps", "keys", "add", "web", "--public-key-file", "~/second.pub", "--public-key-string", third)
	if !strings.Contains(r.stdout, "FINGERPRINT") || !strings.Contains(r.stdout, "third") {
		t.Fatalf("add output:\n%s", r.stdout)
	}
	if got := keys(); len(got) != 3 {
		t.Fatalf("keys after add: %+v", got)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad string", []string{"--public-key-string", "ssh-rsa nope"}, "--public-key-string: not an OpenSSH public key"},
		{"private key file", []string{"--public-key-file", second}, "is a private key; give its public half"},
		{"nothing", nil, "no key given"},
	} {
		t.Run("add "+tc.name, func(t *testing.T) {
			r := u.run(append([]string{"vps", "keys", "add", "web"}, tc.args...)...)
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want %q: %s", tc.want, r)
			}
		})
	}

	// Remove by fingerprint and by .pub file.
	u.mustRun("vps", "keys", "remove", "web", fingerprintOf(t, third))
	u.mustRun("vps", "keys", "rm", "web", second+".pub")
	got := keys()
	if len(got) != 1 || got[0].Line != k.Line {
		t.Fatalf("keys after removal: %+v (second was %q)", got, secondLine)
	}
	if r := u.run("vps", "keys", "remove", "web", "nonsense"); r.code != 1 || !strings.Contains(r.stderr, "neither a fingerprint") {
		t.Fatal(r)
	}
	if r := u.run("vps", "keys", "remove", "web", fingerprintOf(t, third)); r.code != 1 || !strings.Contains(r.stderr, "has no key") {
		t.Fatal(r)
	}
	r = u.mustRun("vps", "keys", "list", "web")
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "first") {
		t.Fatalf("table:\n%s", r.stdout)
	}
}
