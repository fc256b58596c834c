package cli

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/gateway/api"
)

func TestUserCommands(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	admin := th.admin(t)

	r := admin.mustRun("user", "add", "alice")
	m := regexp.MustCompile(`shown only now:\n\n  (\S+)\n`).FindStringSubmatch(r.stdout)
	if m == nil || !strings.Contains(r.stdout, "kohakuriver login -H 127.0.0.1") {
		t.Fatalf("no token in:\n%s", r.stdout)
	}
	// The printed token logs alice in.
	alice := newUser(t)
	alice.stdin = m[1] + "\n"
	alice.mustRun("-H", "127.0.0.1", "-P", itoa(th.apiPort), "login")
	if r := alice.run("user", "list"); r.code != 1 || !strings.Contains(r.stderr, "only admins") || !strings.Contains(r.stderr, "admin's token") {
		t.Fatalf("non-admin listed users: %s", r)
	}

	r = admin.mustRun("user", "add", "bob", "--admin", "--format", "json")
	var nu api.NewUser
	if err := json.Unmarshal([]byte(r.stdout), &nu); err != nil || nu.Name != "bob" || !nu.Admin || nu.Token == "" {
		t.Fatalf("%v %s", err, r.stdout)
	}
	r = admin.mustRun("user", "list", "--format", "json")
	var users []api.UserInfo
	if err := json.Unmarshal([]byte(r.stdout), &users); err != nil || len(users) != 3 {
		t.Fatalf("%v %s", err, r.stdout)
	}
	r = admin.mustRun("user", "ls")
	if !regexp.MustCompile(`(?m)^bob\s+yes\s`).MatchString(r.stdout) || !regexp.MustCompile(`(?m)^alice\s+no\s`).MatchString(r.stdout) {
		t.Fatalf("table:\n%s", r.stdout)
	}
	if r := admin.run("user", "add", "alice"); r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Fatal(r)
	}
	admin.mustRun("user", "remove", "alice")
	if r := alice.run("vps", "list"); r.code != 1 || !strings.Contains(r.stderr, "invalid API token") {
		t.Fatalf("removed user's token still works: %s", r)
	}
}
