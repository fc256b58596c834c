package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/gateway/host"
	"github.com/kohakuriver/kohakuriver/store"
)

func TestLogin(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	for _, tc := range []struct {
		name     string
		args     []string
		stdin    string
		terminal bool
		secret   string
		wantErr  string // "" = success
	}{
		{name: "flag", args: []string{"--token", th.adminToken}},
		{name: "stdin", stdin: th.adminToken + "\n"},
		{name: "terminal prompt", terminal: true, secret: th.adminToken},
		{name: "unverified", args: []string{"--token", "whatever", "--no-verify"}},
		{name: "bad token", args: []string{"--token", "not-a-token"}, wantErr: "invalid API token"},
		{name: "empty stdin", stdin: "\n", wantErr: "no token given"},
		{name: "token with spaces", stdin: "two words\n", wantErr: "spaces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUser(t)
			u.stdin, u.stdinTerminal, u.secret = tc.stdin, tc.terminal, tc.secret
			args := append([]string{"-H", "127.0.0.1", "-P", itoa(th.apiPort), "--ssh-port", itoa(th.sshPort), "login"}, tc.args...)
			r := u.run(args...)
			authPath := filepath.Join(u.home, ".kohakuriver", "auth.json")
			if tc.wantErr != "" {
				if r.code != 1 || !strings.Contains(r.stderr, tc.wantErr) {
					t.Fatalf("want error %q: %s", tc.wantErr, r)
				}
				if fileExists(authPath) {
					t.Fatal("auth.json written after a failed login")
				}
				return
			}
			if r.code != 0 {
				t.Fatal(r)
			}
			if m := mode(t, authPath); m != 0o600 {
				t.Errorf("auth.json mode %o, want 600", m)
			}
			if m := mode(t, filepath.Dir(authPath)); m != 0o700 {
				t.Errorf("~/.kohakuriver mode %o, want 700", m)
			}
			var af authFile
			b, _ := os.ReadFile(authPath)
			if err := json.Unmarshal(b, &af); err != nil {
				t.Fatal(err)
			}
			if af.Host != "127.0.0.1" || af.Port != th.apiPort || af.SSHPort != th.sshPort || af.Token == "" {
				t.Fatalf("auth.json = %+v", af)
			}
			if af.Token == th.adminToken {
				// The saved host and token are used without flags.
				if r := u.run("user", "list", "--format", "json"); r.code != 0 || !strings.Contains(r.stdout, `"admin"`) {
					t.Fatalf("after login: %s", r)
				}
			}
		})
	}
}

func TestMissingTokenSaysLogin(t *testing.T) {
	t.Parallel()
	u := newUser(t)
	r := u.run("vps", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "kohakuriver login") || !strings.Contains(r.stderr, "KOHAKURIVER_TOKEN") {
		t.Fatal(r)
	}
}

func TestTokenSources(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	t.Run("environment", func(t *testing.T) {
		u := newUser(t)
		u.env["KOHAKURIVER_TOKEN"] = th.adminToken
		if r := u.run("-H", "127.0.0.1", "-P", itoa(th.apiPort), "node", "list"); r.code != 0 {
			t.Fatal(r)
		}
	})
	t.Run("never sent to another host", func(t *testing.T) {
		u := th.admin(t)
		r := u.run("-H", "other.example", "vps", "list")
		if r.code != 1 || !strings.Contains(r.stderr, "is for host 127.0.0.1, not other.example") ||
			!strings.Contains(r.stderr, "kohakuriver login -H other.example") {
			t.Fatal(r)
		}
	})
	t.Run("unreachable host", func(t *testing.T) {
		u := newUser(t)
		u.env["KOHAKURIVER_TOKEN"] = "x"
		r := u.run("-H", "127.0.0.1", "-P", "1", "vps", "list")
		if r.code != 1 || !strings.Contains(r.stderr, "cannot reach the host API") || !strings.Contains(r.stderr, "-H/--host") {
			t.Fatal(r)
		}
	})
	t.Run("revoked token", func(t *testing.T) {
		u := newUser(t)
		u.saveAuth("revoked-token-0123456789", th.apiPort, th.sshPort)
		r := u.run("vps", "list")
		if r.code != 1 || !strings.Contains(r.stderr, "invalid API token") || !strings.Contains(r.stderr, "kohakuriver login") {
			t.Fatal(r)
		}
	})
}

// TestSSHPortFromHost: when no flag, variable or auth.json names the
// gateway's port, the CLI uses the one the host reports (this test host
// listens on a random port, not 8002), and login does not save a guess.
func TestSSHPortFromHost(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	th.addVPS(t, store.VPS{Name: "web"})
	u := newUser(t)
	// As an older CLI left it: the 8002 guess saved.
	u.saveAuth("old-token", th.apiPort, 8002)
	if r := u.run("-H", "127.0.0.1", "-P", itoa(th.apiPort), "login", "--token", th.adminToken); r.code != 0 {
		t.Fatal(r)
	}
	var af authFile
	b, _ := os.ReadFile(filepath.Join(u.home, ".kohakuriver", "auth.json"))
	if err := json.Unmarshal(b, &af); err != nil || af.SSHPort != 0 {
		t.Fatalf("auth.json = %s (%v): no ssh_port was given, none may be saved", b, err)
	}
	r := u.run("ssh", "config")
	if r.code != 0 || !strings.Contains(r.stdout, "    Port "+itoa(th.sshPort)+"\n") {
		t.Fatalf("want Port %d (the host's report) in:\n%s", th.sshPort, r)
	}
	known, _ := os.ReadFile(filepath.Join(u.home, ".kohakuriver", "known_hosts"))
	if !strings.Contains(string(known), "[127.0.0.1]:"+itoa(th.sshPort)+" ") {
		t.Fatalf("known_hosts pins another port:\n%s", known)
	}
}

// TestPublicSSHPortReported: a host behind a port mapping reports the port
// users connect to, not the one it binds, and the CLI uses it.
func TestPublicSSHPortReported(t *testing.T) {
	t.Parallel()
	th := startHostWith(t, func(c *host.Config) { c.PublicSSHPort = 2222 })
	th.addVPS(t, store.VPS{Name: "web"})
	u := newUser(t)
	if r := u.run("-H", "127.0.0.1", "-P", itoa(th.apiPort), "login", "--token", th.adminToken); r.code != 0 {
		t.Fatal(r)
	}
	if r := u.run("ssh", "config"); r.code != 0 || !strings.Contains(r.stdout, "    Port 2222\n") {
		t.Fatalf("want Port 2222 (the public port) in:\n%s", r)
	}
}
