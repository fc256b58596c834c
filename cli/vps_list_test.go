package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/store"
)

func TestVPSList(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	web := th.addVPS(t, store.VPS{Name: "web", Cores: 2, MemoryMB: 2048})
	other := th.addVPS(t, store.VPS{Status: store.StatusStopped})
	admin := th.admin(t)

	t.Run("list json", func(t *testing.T) {
		r := admin.mustRun("vps", "list", "--format", "json")
		var list []store.VPS
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, r.stdout)
		}
		if len(list) != 2 || list[0].TaskID != web.TaskID || list[1].Status != store.StatusStopped {
			t.Fatalf("%+v", list)
		}
	})
	t.Run("list table", func(t *testing.T) {
		r := admin.mustRun("vps", "ls")
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "TASK ID") ||
			!strings.Contains(lines[1], web.TaskID) || !strings.Contains(lines[1], "web") ||
			!strings.Contains(lines[2], other.TaskID) || !strings.Contains(lines[2], "stopped") {
			t.Fatalf("table:\n%s", r.stdout)
		}
	})
	t.Run("empty list for another user", func(t *testing.T) {
		nu, err := api.NewClient("http://127.0.0.1:"+itoa(th.apiPort), th.adminToken, nil).CreateUser(t.Context(), "bob", false)
		if err != nil {
			t.Fatal(err)
		}
		bob := newUser(t)
		bob.saveAuth(nu.Token, th.apiPort, th.sshPort)
		if r := bob.mustRun("vps", "list", "--format", "json"); strings.TrimSpace(r.stdout) != "[]" {
			t.Fatalf("want [], got %s", r)
		}
		if r := bob.mustRun("vps", "list"); r.stdout != "" || !strings.Contains(r.stderr, "kohakuriver vps create") {
			t.Fatal(r)
		}
		// Another user's VPS looks missing.
		if r := bob.run("vps", "status", "web"); r.code != 1 || !strings.Contains(r.stderr, `no VPS "web"`) {
			t.Fatal(r)
		}
	})
}
