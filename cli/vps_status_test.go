package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

func TestVPSStatus(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	web := th.addVPS(t, store.VPS{Name: "web", Cores: 2, MemoryMB: 2048, Message: "all good"})
	admin := th.admin(t)
	admin.now = web.CreatedAt.Add(90 * time.Second)
	r := admin.mustRun("vps", "status", "web")
	for _, want := range []string{"task id:", web.TaskID, "status:", "running", "message:", "all good", "cores:", "2", "memory:", "2G",
		"ssh port:", itoa(web.SSHPort), "(1m ago)", "keys (0):"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	r = admin.mustRun("vps", "status", web.TaskID, "--format", "json")
	var v store.VPS
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Name != "web" {
		t.Fatalf("%v %s", err, r.stdout)
	}
	if r := admin.run("vps", "status", "nope"); r.code != 1 || !strings.Contains(r.stderr, "kohakuriver vps list") {
		t.Fatal(r)
	}
}
