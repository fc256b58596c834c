package cli

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/store"
)

func TestNodeCommands(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	now := time.Now().Truncate(time.Second)
	th.addNode(t, "n1", store.NodeOnline, now.Add(-3*time.Second))
	th.addNode(t, "n2", store.NodeOffline, now.Add(-2*time.Hour))
	th.addVPS(t, store.VPS{Node: "n1"})
	u := th.admin(t)
	u.now = now

	r := u.mustRun("node", "list")
	for _, re := range []string{
		`(?m)^NAME\s+STATUS\s+LAST HEARTBEAT\s+CORES\s+MEMORY\s+VPS`,
		`(?m)^n1\s+online\s+3s ago\s+4\s+8G\s+1\s`,
		`(?m)^n2\s+offline\s+2h ago\s+4\s+8G\s+0\s`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("no match for %s in:\n%s", re, r.stdout)
		}
	}
	r = u.mustRun("node", "status", "n1")
	for _, want := range []string{"status:", "online", "last heartbeat: 3s ago", "vps count:", "cores:"} {
		if !strings.Contains(regexp.MustCompile(` +`).ReplaceAllString(r.stdout, " "), want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	r = u.mustRun("node", "status", "n2", "--format", "json")
	var n api.NodeInfo
	if err := json.Unmarshal([]byte(r.stdout), &n); err != nil || n.Status != store.NodeOffline {
		t.Fatalf("%v %s", err, r.stdout)
	}
	if r := u.run("node", "status", "n9"); r.code != 1 || !strings.Contains(r.stderr, `no node "n9"`) {
		t.Fatal(r)
	}
}
