package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// fakeSSH writes a script that prints its arguments one per line and
// exits with code.
func fakeSSH(t *testing.T, code int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ssh")
	script := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\nexit " + itoa(code) + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSSHCommandLine(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	th.addNode(t, "n1", store.NodeOnline, time.Now())
	web := th.addVPS(t, store.VPS{Name: "web"})
	alice := th.addVPS(t, store.VPS{LoginUser: "alice"})
	gw := itoa(th.sshPort)
	for _, tc := range []struct {
		name    string
		args    []string
		genKey  string // task id whose ~/.ssh/kohakuriver_<id> exists
		ownKey  bool   // pass --key ~/my_key
		want    []string
		wantNot []string
	}{
		{name: "by name, ssh's own keys", args: []string{"ssh", "web"},
			want:    []string{"-p", gw, "-l", "root@" + web.TaskID, "127.0.0.1"},
			wantNot: []string{"-i", "IdentitiesOnly=yes"}},
		{name: "connect alias", args: []string{"ssh", "connect", web.TaskID},
			want: []string{"-l", "root@" + web.TaskID}},
		{name: "login user of the VPS", args: []string{"ssh", alice.TaskID},
			want: []string{"-l", "alice@" + alice.TaskID}},
		{name: "--user", args: []string{"ssh", "web", "--user", "bob"},
			want: []string{"-l", "bob@" + web.TaskID}},
		{name: "--proxy-port", args: []string{"ssh", "web", "--proxy-port", "2200"},
			want: []string{"-p", "2200"}},
		{name: "generated key found", args: []string{"ssh", "web"}, genKey: web.TaskID,
			want: []string{"-i", "GEN", "-o", "IdentitiesOnly=yes"}},
		{name: "--key wins", args: []string{"ssh", "web"}, genKey: web.TaskID, ownKey: true,
			want: []string{"-i", "OWN", "-o", "IdentitiesOnly=yes"}, wantNot: []string{"GEN"}},
		{name: "passthrough after --", args: []string{"ssh", "web", "--", "-v", "-L", "8080:localhost:80", "echo", "--", "hi"},
			want: []string{"127.0.0.1", "-v", "-L", "8080:localhost:80", "echo", "--", "hi"}},
		{name: "command without --", args: []string{"ssh", "web", "uname", "-a"},
			want: []string{"127.0.0.1", "uname", "-a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := th.admin(t)
			u.ssh = fakeSSH(t, 0)
			gen := filepath.Join(u.home, ".ssh", "kohakuriver_"+tc.genKey)
			own := filepath.Join(u.home, "my_key")
			if tc.genKey != "" {
				newKeyPair(t, gen, "")
			}
			args := tc.args
			if tc.ownKey {
				newKeyPair(t, own, "")
				args = append(args[:len(args):len(args)], "--key", "~/my_key")
			}
			r := u.run(args...)
			if r.code != 0 {
				t.Fatal(r)
			}
			got := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
			known := filepath.Join(u.home, ".kohakuriver", "known_hosts")
			// Host key checking is always on, without prompts.
			must := []string{"-o", "UserKnownHostsFile=" + known, "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=kohakuriver-gateway"}
			if !containsSeq(got, must) {
				t.Fatalf("args %q lack %q", got, must)
			}
			want := replaceAll(tc.want, "GEN", gen, "OWN", own)
			if !containsSeq(got, want) {
				t.Fatalf("args %q lack %q", got, want)
			}
			for _, w := range replaceAll(tc.wantNot, "GEN", gen) {
				for _, a := range got {
					if a == w {
						t.Fatalf("args %q contain %q", got, w)
					}
				}
			}
			for _, a := range got {
				if strings.Contains(a, "StrictHostKeyChecking=no") {
					t.Fatal("host key checking disabled")
				}
			}
			if got[len(got)-1] == "--" && len(tc.args) > 2 && tc.args[2] == "--" {
				t.Fatal("the -- separator reached ssh")
			}
		})
	}
}

// containsSeq reports whether want appears in got as consecutive elements.
func containsSeq(got, want []string) bool {
	for i := 0; i+len(want) <= len(got); i++ {
		ok := true
		for j := range want {
			if got[i+j] != want[j] {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func replaceAll(in []string, oldNew ...string) []string {
	r := strings.NewReplacer(oldNew...)
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = r.Replace(s)
	}
	return out
}

func TestSSHExitCodeIsSSHs(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	th.addVPS(t, store.VPS{Name: "web"})
	for _, code := range []int{0, 1, 42, 255} {
		u := th.admin(t)
		u.ssh = fakeSSH(t, code)
		if r := u.run("ssh", "web", "--", "exit", itoa(code)); r.code != code {
			t.Fatalf("ssh exited %d, kohakuriver %s", code, r)
		}
	}
}

func TestSSHPinsGatewayHostKeys(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	th.addVPS(t, store.VPS{Name: "web"})
	u := th.admin(t)
	u.ssh = fakeSSH(t, 0)
	u.mustRun("ssh", "web")
	known := filepath.Join(u.home, ".kohakuriver", "known_hosts")
	if m := mode(t, known); m != 0o600 {
		t.Errorf("known_hosts mode %o", m)
	}
	b, _ := os.ReadFile(known)
	lines := nonComment(string(b))
	want := len(th.h.HostKeys) * 2 // under [host]:port and under the alias
	if len(lines) != want {
		t.Fatalf("known_hosts has %d lines, want %d:\n%s", len(lines), want, b)
	}
	for i, k := range th.h.HostKeys {
		for _, prefix := range []string{"[127.0.0.1]:" + itoa(th.sshPort) + " ", "kohakuriver-gateway "} {
			line := prefix + strings.TrimSpace(string(gossh.MarshalAuthorizedKey(k)))
			if !strings.Contains(string(b), line) {
				t.Errorf("key %d: no line %q", i, line)
			}
		}
	}
}

func nonComment(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func TestSSHRefusesVPSsThatCannotLogIn(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	stopped := th.addVPS(t, store.VPS{Name: "stopped", Status: store.StatusStopped})
	lost := th.addVPS(t, store.VPS{Name: "lost", Status: store.StatusLost})
	for _, tc := range []struct{ ref, want string }{
		{stopped.Name, "VPS stopped is stopped: start it with `kohakuriver vps start stopped`"},
		{lost.TaskID, "its node n1 stopped reporting"},
		{"missing", `no VPS "missing"`},
	} {
		u := th.admin(t)
		u.ssh = fakeSSH(t, 0)
		r := u.run("ssh", tc.ref)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("ssh %s: want %q: %s", tc.ref, tc.want, r)
		}
	}
	th.addVPS(t, store.VPS{Name: "web"})
	u := th.admin(t)
	u.ssh = fakeSSH(t, 0)
	if r := u.run("ssh", "web", "--key", "/nonexistent"); r.code != 1 || !strings.Contains(r.stderr, "--key /nonexistent: no such file") {
		t.Fatal(r)
	}
}
