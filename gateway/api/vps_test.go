package api

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

func TestCreateVPS(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	key := newPublicKey(t, "alice@laptop")
	v, err := e.client("alice").CreateVPS(ctx, CreateVPSRequest{
		Name: "box", KeyMode: store.KeyModeUpload, Cores: 2, MemoryMB: 2048,
		PublicKeys: []string{key, "  " + key + "  "}, // duplicates collapse
	})
	if err != nil {
		t.Fatalf("CreateVPS: %v", err)
	}
	switch {
	case !store.IsTaskID(v.TaskID) || len(v.TaskID) != 19:
		t.Errorf("task id %q is not 19 digits", v.TaskID)
	case v.SSHPort != 9000:
		t.Errorf("ssh port %d, want 9000", v.SSHPort)
	case v.Status != store.StatusRunning:
		t.Errorf("status %s, want running", v.Status)
	case v.Owner != "alice" || v.Node != "n1" || v.Name != "box":
		t.Errorf("owner/node/name = %s/%s/%s", v.Owner, v.Node, v.Name)
	case v.Image != DefaultImage || v.LoginUser != store.DefaultLoginUser:
		t.Errorf("image/login = %s/%s, want defaults", v.Image, v.LoginUser)
	case len(v.HostKeys) != 1 || !slices.Equal(v.HostKeys, e.agents.reportedHostKeys()):
		t.Errorf("host keys %v not pinned (node reported %v)", v.HostKeys, e.agents.reportedHostKeys())
	case len(v.Keys) != 1 || v.Keys[0].Fingerprint != fingerprint(t, key):
		t.Errorf("keys = %+v", v.Keys)
	}
	if stored := e.vps(t, "box"); stored.Status != store.StatusRunning || !slices.Equal(stored.HostKeys, v.HostKeys) {
		t.Errorf("stored = %+v", stored)
	}
	spec := e.agents.specOf(v.TaskID)
	want := []string{v.Keys[0].Line, e.caLine}
	if !slices.Equal(spec.AuthorizedKeys, want) {
		t.Errorf("node got authorized keys %q, want %q", spec.AuthorizedKeys, want)
	}
	if spec.Cores != 2 || spec.MemoryMB != 2048 || spec.LoginUser != "root" || spec.Image != DefaultImage {
		t.Errorf("node got spec %+v", spec)
	}

	// key_mode none: the gateway's CA line only. Ports count up.
	v2, err := e.client("alice").CreateVPS(ctx, CreateVPSRequest{KeyMode: store.KeyModeNone, LoginUser: "dev", Image: "debian:12"})
	if err != nil {
		t.Fatalf("CreateVPS none: %v", err)
	}
	if v2.SSHPort != 9001 || v2.Name != "" || v2.LoginUser != "dev" || v2.Image != "debian:12" {
		t.Errorf("second VPS = %+v", v2)
	}
	if got := e.agents.specOf(v2.TaskID).AuthorizedKeys; !slices.Equal(got, []string{e.caLine}) {
		t.Errorf("key_mode none: node got %q, want only the CA line", got)
	}
	if got, err := e.client("alice").GetVPS(ctx, v2.TaskID); err != nil || got.TaskID != v2.TaskID {
		t.Errorf("GetVPS by task id = %v, %v", got.TaskID, err)
	}
}

// createCases are request bodies and the answer each gets from a fresh env
// ("box" exists). They also seed FuzzCreateVPSRequest.
var createCases = []struct {
	name, body string
	status     int
	msg        string // substring of the error message
}{
	{"bad key", `{"key_mode":"upload","public_keys":["ssh-ed25519 notbase64"]}`, 400, "public_keys[0]: not an OpenSSH public key"},
	{"second key bad", `{"key_mode":"upload","public_keys":["KEY","nope"]}`, 400, "public_keys[1]"},
	{"two keys on a line", `{"key_mode":"upload","public_keys":["KEY\nKEY"]}`, 400, "one public key per line"},
	{"bad name", `{"name":"Box!","key_mode":"none"}`, 400, "VPS name"},
	{"all digit name", `{"name":"123","key_mode":"none"}`, 400, "task id"},
	{"reserved name", `{"name":"root","key_mode":"none"}`, 400, `VPS name "root" is reserved`},
	{"bad login user", `{"login_user":"Root","key_mode":"none"}`, 400, "login user"},
	{"unknown field", `{"key_mode":"none","ssh":true}`, 400, `unknown field "ssh"`},
	{"none with keys", `{"key_mode":"none","public_keys":["KEY"]}`, 400, "takes no public_keys"},
	{"upload without keys", `{"key_mode":"upload"}`, 400, "at least one key"},
	{"no key mode", `{"public_keys":["KEY"]}`, 400, "key_mode is required"},
	{"unknown key mode", `{"key_mode":"magic"}`, 400, "unknown key_mode"},
	{"negative cores", `{"key_mode":"none","cores":-1}`, 400, "cores"},
	{"too many cores", `{"key_mode":"none","cores":5000}`, 400, "cores"},
	{"more cores than the node", `{"key_mode":"none","cores":64}`, 400, "no online node has 64 cores"},
	{"negative memory", `{"key_mode":"none","memory_mb":-5}`, 400, "memory_mb"},
	{"image with space", `{"key_mode":"none","image":"a b"}`, 400, "image"},
	{"wrong type", `{"key_mode":"none","cores":"two"}`, 400, `"cores" must be a JSON number`},
	{"array body", `[]`, 400, "JSON object"},
	{"not json", `key_mode=none`, 400, "not valid JSON"},
	{"truncated", `{"key_mode":"none"`, 400, "truncated"},
	{"empty", ``, 400, "empty"},
	{"trailing data", `{"key_mode":"none"}{}`, 400, "exactly one JSON object"},
	{"null", `null`, 400, "key_mode is required"},
	{"unknown node", `{"key_mode":"none","node":"n9"}`, 404, `no node "n9"`},
	{"name taken", `{"name":"box","key_mode":"none"}`, 409, `"box" already exists`},
}

// createBody replaces KEY in a case body with a valid public key.
func createBody(tb testing.TB, body string) string {
	return strings.ReplaceAll(body, "KEY", newPublicKey(tb, "k"))
}

func TestCreateVPSValidation(t *testing.T) {
	e := newEnv(t)
	e.createVPS(t, "alice", "box")
	for _, tt := range createCases {
		t.Run(tt.name, func(t *testing.T) {
			before, creates := e.countVPS(t), len(e.agents.called("create"))
			status, body := e.do(t, "bob", "POST", "/api/v1/vps", createBody(t, tt.body))
			if status != tt.status || !strings.Contains(errBody(t, body), tt.msg) {
				t.Fatalf("got %d %s, want %d with %q", status, body, tt.status, tt.msg)
			}
			if e.countVPS(t) != before || len(e.agents.called("create")) != creates {
				t.Fatal("a refused request created something")
			}
		})
	}
	t.Run("too large", func(t *testing.T) {
		big := `{"key_mode":"none","image":"` + strings.Repeat("a", MaxBodySize) + `"}`
		if status, body := e.do(t, "bob", "POST", "/api/v1/vps", big); status != http.StatusRequestEntityTooLarge {
			t.Fatalf("got %d %s, want 413", status, body)
		}
	})
	t.Run("name taken via client", func(t *testing.T) {
		_, err := e.client("bob").CreateVPS(context.Background(), CreateVPSRequest{Name: "box", KeyMode: store.KeyModeNone})
		if StatusOf(err) != http.StatusConflict {
			t.Fatalf("err = %v, want a 409 *Error", err)
		}
	})
}

func TestCreateVPSNoOnlineNode(t *testing.T) {
	e := newEnv(t)
	e.addNode(t, "n1", store.NodeOffline)
	status, body := e.do(t, "alice", "POST", "/api/v1/vps", `{"key_mode":"none"}`)
	if status != http.StatusServiceUnavailable || !strings.Contains(errBody(t, body), "kohakuriver agent") {
		t.Fatalf("got %d %s, want 503 telling to start an agent", status, body)
	}
	status, body = e.do(t, "alice", "POST", "/api/v1/vps", `{"key_mode":"none","node":"n1"}`)
	if status != http.StatusServiceUnavailable || !strings.Contains(errBody(t, body), "n1 is offline") {
		t.Fatalf("named offline node: %d %s, want 503", status, body)
	}
	if e.countVPS(t) != 0 {
		t.Fatal("records created without a node")
	}
}

func TestCreateVPSPicksLeastLoadedNode(t *testing.T) {
	e := newEnv(t)
	e.addNode(t, "n2", store.NodeOnline)
	e.addNode(t, "n3", store.NodeOffline)
	var got []string
	for range 4 {
		got = append(got, e.createVPS(t, "alice", "").Node)
	}
	if want := []string{"n1", "n2", "n1", "n2"}; !slices.Equal(got, want) {
		t.Fatalf("placed on %v, want %v", got, want)
	}
	v, err := e.client("alice").CreateVPS(context.Background(), CreateVPSRequest{Node: "n2", KeyMode: store.KeyModeNone})
	if err != nil || v.Node != "n2" {
		t.Fatalf("named node: %v, %v", v.Node, err)
	}
}

func TestCreateVPSNodeFailure(t *testing.T) {
	tests := []struct {
		name       string
		fail       error
		notRunning bool
		status     int
		msg        string
	}{
		{"node error", errors.New("node agent: image kohakuriver/vps:latest not found (HTTP 500)"), false, 502, "image kohakuriver/vps:latest not found"},
		{"timeout", context.DeadlineExceeded, false, 504, "did not answer in time"},
		{"not running", nil, true, 502, "exited with code 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.agents.set(func(f *fakeAgents) { f.fail["create"], f.notRunning = tt.fail, tt.notRunning })
			_, err := e.client("alice").CreateVPS(context.Background(), CreateVPSRequest{Name: "box", KeyMode: store.KeyModeNone})
			var ae *Error
			if !errors.As(err, &ae) || ae.Status != tt.status || !strings.Contains(ae.Message, tt.msg) {
				t.Fatalf("err = %v, want %d with %q", err, tt.status, tt.msg)
			}
			if !strings.Contains(ae.Message, "delete it with") {
				t.Errorf("message %q does not say what to do", ae.Message)
			}
			v := e.vps(t, "box")
			if v.Status != store.StatusFailed || !strings.Contains(v.Message, tt.msg) || !strings.Contains(v.Message, "node n1") {
				t.Fatalf("record = %s %q, want failed with the node's message", v.Status, v.Message)
			}
			// The user sees it and can delete it.
			if got, err := e.client("alice").GetVPS(context.Background(), "box"); err != nil || got.Status != store.StatusFailed {
				t.Fatalf("GetVPS = %v, %v", got.Status, err)
			}
			if err := e.client("alice").DeleteVPS(context.Background(), "box", false); err != nil {
				t.Fatalf("delete failed VPS: %v", err)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.client("alice")
	v := e.createVPS(t, "alice", "box")
	pinned := v.HostKeys

	steps := []struct {
		name   string
		op     func() (store.VPS, error)
		status store.VPSStatus // want after, on success
		code   int             // want *Error status, 0 for success
		calls  string          // node op expected
	}{
		{"start running", func() (store.VPS, error) { return c.StartVPS(ctx, "box") }, "", 409, ""},
		{"stop", func() (store.VPS, error) { return c.StopVPS(ctx, "box") }, store.StatusStopped, 0, "stop"},
		{"stop stopped", func() (store.VPS, error) { return c.StopVPS(ctx, "box") }, "", 409, ""},
		{"start", func() (store.VPS, error) { return c.StartVPS(ctx, "box") }, store.StatusRunning, 0, "start"},
		{"restart", func() (store.VPS, error) { return c.RestartVPS(ctx, v.TaskID) }, store.StatusRunning, 0, "restart"},
	}
	for _, s := range steps {
		before := len(e.agents.called(s.calls))
		got, err := s.op()
		if s.code != 0 {
			if StatusOf(err) != s.code {
				t.Fatalf("%s: err = %v, want %d", s.name, err, s.code)
			}
			continue
		}
		if err != nil || got.Status != s.status {
			t.Fatalf("%s: %v, %v; want %s", s.name, got.Status, err, s.status)
		}
		if e.vps(t, "box").Status != s.status || len(e.agents.called(s.calls)) != before+1 {
			t.Fatalf("%s: store or node not updated", s.name)
		}
	}
	// After a start the node got the current keys again.
	if got := e.agents.keysOf(v.TaskID); !slices.Equal(got, []string{v.Keys[0].Line, e.caLine}) {
		t.Fatalf("keys after start = %q", got)
	}

	// The node now shows another host key: the pinned one stays.
	e.agents.set(func(f *fakeAgents) { f.hostKeys = []string{newPublicKey(t, "")} })
	got, err := c.RestartVPS(ctx, "box")
	if err != nil || got.Status != store.StatusRunning {
		t.Fatalf("restart with new host key: %v, %v", got.Status, err)
	}
	if !slices.Equal(got.HostKeys, pinned) || !strings.Contains(got.Message, "host key") {
		t.Fatalf("host keys %v message %q; want the pinned keys kept and a message", got.HostKeys, got.Message)
	}
	// The same key with another comment is no change.
	e.agents.set(func(f *fakeAgents) {
		f.hostKeys = []string{strings.Fields(pinned[0])[0] + " " + strings.Fields(pinned[0])[1] + " other"}
	})
	if got, err = c.RestartVPS(ctx, "box"); err != nil || got.Message != "" {
		t.Fatalf("restart with the pinned key: %q, %v", got.Message, err)
	}

	// A failed start leaves the VPS failed with the node's message.
	if _, err := c.StopVPS(ctx, "box"); err != nil {
		t.Fatal(err)
	}
	e.agents.set(func(f *fakeAgents) { f.fail["start"] = errors.New("container is gone") })
	_, err = c.StartVPS(ctx, "box")
	if StatusOf(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "container is gone") {
		t.Fatalf("failing start: %v", err)
	}
	if v := e.vps(t, "box"); v.Status != store.StatusFailed || !strings.Contains(v.Message, "container is gone") {
		t.Fatalf("after failing start: %s %q", v.Status, v.Message)
	}
	// Failed VPSs may be started again.
	e.agents.set(func(f *fakeAgents) { delete(f.fail, "start") })
	if got, err := c.StartVPS(ctx, "box"); err != nil || got.Status != store.StatusRunning {
		t.Fatalf("start after failure: %v, %v", got.Status, err)
	}
	// A failing stop changes nothing.
	e.agents.set(func(f *fakeAgents) { f.fail["stop"] = context.DeadlineExceeded })
	if _, err := c.StopVPS(ctx, "box"); StatusOf(err) != http.StatusGatewayTimeout {
		t.Fatalf("stop timing out: %v, want 504", err)
	}
	if v := e.vps(t, "box"); v.Status != store.StatusRunning {
		t.Fatalf("after failing stop: %s", v.Status)
	}
}

func TestLifecycleNeedsOnlineNode(t *testing.T) {
	e := newEnv(t)
	e.createVPS(t, "alice", "box")
	e.addNode(t, "n1", store.NodeOffline)
	for _, op := range []string{"stop", "start", "restart"} {
		status, body := e.do(t, "alice", "POST", "/api/v1/vps/box/"+op, "")
		if status != http.StatusServiceUnavailable || !strings.Contains(errBody(t, body), "offline") {
			t.Errorf("%s: %d %s, want 503", op, status, body)
		}
	}
}

func TestPendingRefusesConcurrentOps(t *testing.T) {
	e := newEnv(t)
	v := e.createVPS(t, "alice", "box")
	if _, err := e.st.UpdateVPS(context.Background(), v.TaskID, func(x *store.VPS) error {
		x.Status = store.StatusPending
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"stop", "start", "restart"} {
		if status, body := e.do(t, "alice", "POST", "/api/v1/vps/box/"+op, ""); status != http.StatusConflict {
			t.Errorf("%s while pending: %d %s, want 409", op, status, body)
		}
	}
}

// TestStopClaimsTheRecord: while a stop is with the node, a start, restart
// or second stop of the same VPS is refused, so they cannot finish in an
// order that leaves the record running and the container stopped.
func TestStopClaimsTheRecord(t *testing.T) {
	e := newEnv(t)
	e.createVPS(t, "alice", "box")
	gate := make(chan struct{})
	e.agents.set(func(f *fakeAgents) { f.stopGate = gate })
	stopped := make(chan int, 1)
	go func() {
		status, _ := e.do(t, "alice", "POST", "/api/v1/vps/box/stop", "")
		stopped <- status
	}()
	for e.vps(t, "box").Status != store.StatusPending {
		time.Sleep(time.Millisecond)
	}
	for _, op := range []string{"stop", "start", "restart"} {
		status, body := e.do(t, "alice", "POST", "/api/v1/vps/box/"+op, "")
		if status != http.StatusConflict || !strings.Contains(errBody(t, body), "busy (stopping)") {
			t.Errorf("%s during a stop: %d %s, want 409 busy (stopping)", op, status, body)
		}
	}
	close(gate)
	if status := <-stopped; status != http.StatusOK {
		t.Fatalf("stop: %d", status)
	}
	if v := e.vps(t, "box"); v.Status != store.StatusStopped {
		t.Fatalf("after stop: %s", v.Status)
	}
}

func TestDeleteVPS(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.client("alice")
	v := e.createVPS(t, "alice", "box")
	if err := c.DeleteVPS(ctx, "box", false); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := e.st.VPS(ctx, v.TaskID); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("record not deleted")
	}
	if got := e.agents.called("delete"); !slices.Equal(got, []string{v.TaskID}) {
		t.Fatalf("node deletes = %v", got)
	}
	if err := c.DeleteVPS(ctx, "box", false); StatusOf(err) != http.StatusNotFound {
		t.Fatalf("second delete: %v, want 404", err)
	}

	// Node fails: kept unless forced.
	v = e.createVPS(t, "alice", "box2")
	e.agents.set(func(f *fakeAgents) { f.fail["delete"] = errors.New("docker is down") })
	if err := c.DeleteVPS(ctx, "box2", false); StatusOf(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("delete with failing node: %v", err)
	}
	if err := c.DeleteVPS(ctx, "box2", true); err != nil {
		t.Fatalf("forced delete with failing node: %v", err)
	}
	e.agents.set(func(f *fakeAgents) { delete(f.fail, "delete") })

	// Node offline: 409 unless forced, and the node is not called.
	v = e.createVPS(t, "alice", "box3")
	e.addNode(t, "n1", store.NodeOffline)
	calls := len(e.agents.called("delete"))
	err := c.DeleteVPS(ctx, "box3", false)
	if StatusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), "offline") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("delete on offline node: %v, want 409 mentioning --force", err)
	}
	if _, err := e.st.VPS(ctx, v.TaskID); err != nil {
		t.Fatal("record deleted without force")
	}
	if err := c.DeleteVPS(ctx, "box3", true); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if _, err := e.st.VPS(ctx, v.TaskID); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("forced delete kept the record")
	}
	if len(e.agents.called("delete")) != calls {
		t.Fatal("the offline node was called")
	}
}
