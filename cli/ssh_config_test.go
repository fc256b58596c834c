package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

// hostBlocks splits an ssh_config into "Host ..." line -> its options.
func hostBlocks(cfg string) map[string][]string {
	blocks := map[string][]string{}
	var cur string
	for _, l := range strings.Split(cfg, "\n") {
		switch {
		case strings.HasPrefix(l, "Host "):
			cur = l
			blocks[cur] = nil
		case cur != "" && strings.TrimSpace(l) != "":
			blocks[cur] = append(blocks[cur], strings.TrimSpace(l))
		}
	}
	return blocks
}

func TestSSHConfig(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	web := th.addVPS(t, store.VPS{Name: "web"})
	bare := th.addVPS(t, store.VPS{LoginUser: "alice"})
	u := th.admin(t)
	genKey := filepath.Join(u.home, ".ssh", "kohakuriver_"+web.TaskID)
	newKeyPair(t, genKey, "")
	known := filepath.Join(u.home, ".kohakuriver", "known_hosts")
	common := []string{
		"HostName 127.0.0.1", "Port " + itoa(th.sshPort), "UserKnownHostsFile " + known,
		"HostKeyAlias kohakuriver-gateway", "StrictHostKeyChecking yes", "ProxyCommand none",
	}
	check := func(t *testing.T, cfg string) {
		t.Helper()
		blocks := hostBlocks(cfg)
		if len(blocks) != 2 {
			t.Fatalf("want 2 Host entries:\n%s", cfg)
		}
		for _, tc := range []struct {
			host    string
			want    []string
			wantNot string
		}{
			{"Host kohakuriver-" + web.TaskID + " kohakuriver-web",
				append([]string{"User root@" + web.TaskID, "IdentityFile " + genKey, "IdentitiesOnly yes"}, common...), ""},
			{"Host kohakuriver-" + bare.TaskID,
				append([]string{"User alice@" + bare.TaskID}, common...), "IdentityFile"},
		} {
			opts, ok := blocks[tc.host]
			if !ok {
				t.Fatalf("no %q in:\n%s", tc.host, cfg)
			}
			joined := "\n" + strings.Join(opts, "\n") + "\n"
			for _, w := range tc.want {
				if !strings.Contains(joined, "\n"+w+"\n") {
					t.Errorf("%s lacks %q:\n%s", tc.host, w, cfg)
				}
			}
			if tc.wantNot != "" && strings.Contains(joined, tc.wantNot) {
				t.Errorf("%s has %s although no generated key exists:\n%s", tc.host, tc.wantNot, cfg)
			}
		}
		if strings.Contains(cfg, "StrictHostKeyChecking no") || strings.Contains(cfg, "/dev/null") {
			t.Fatalf("host key checking is off:\n%s", cfg)
		}
	}

	t.Run("stdout", func(t *testing.T) {
		r := u.mustRun("ssh", "config")
		check(t, r.stdout)
		if !fileExists(known) {
			t.Fatal("known_hosts not written")
		}
	})
	t.Run("output file", func(t *testing.T) {
		r := u.mustRun("ssh", "config", "--output", "~/.ssh/kohakuriver_config")
		path := filepath.Join(u.home, ".ssh", "kohakuriver_config")
		if m := mode(t, path); m != 0o600 {
			t.Errorf("mode %o", m)
		}
		b, _ := os.ReadFile(path)
		check(t, string(b))
		if r.stdout != "" || !strings.Contains(r.stderr, "Include "+path) {
			t.Fatalf("want the Include hint on stderr: %s", r)
		}
	})
}
