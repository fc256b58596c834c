package api

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

func (e *env) agentAPI() *AgentAPI {
	return &AgentAPI{BaseURL: e.ts.URL, ClusterToken: testClusterToken, HTTPClient: e.ts.Client()}
}

func report(vps ...VPSState) AgentReport {
	return AgentReport{Name: "n1", Address: "127.0.0.1:8001", Cores: 8, MemoryMB: 16384, VPS: vps}
}

func TestNodeMonitor(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ag := e.agentAPI()
	c := e.client("alice")
	running := e.createVPS(t, "alice", "running")
	stopped := e.createVPS(t, "alice", "stopped")
	gone := e.createVPS(t, "alice", "gone")
	if _, err := c.StopVPS(ctx, "stopped"); err != nil {
		t.Fatal(err)
	}
	e.agents.set(func(f *fakeAgents) { f.fail["create"] = context.DeadlineExceeded })
	if _, err := c.CreateVPS(ctx, CreateVPSRequest{Name: "failed", KeyMode: store.KeyModeNone}); err == nil {
		t.Fatal("create did not fail")
	}
	statuses := func() map[string]store.VPSStatus {
		m := map[string]store.VPSStatus{}
		for _, ref := range []string{"running", "stopped", "gone", "failed"} {
			m[ref] = e.vps(t, ref).Status
		}
		return m
	}

	// Heartbeats within the timeout keep the node online.
	e.clock.advance(10 * time.Second)
	if err := ag.Heartbeat(ctx, report()); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	e.clock.advance(10 * time.Second)
	if err := e.srv.checkNodes(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.st.Node(ctx, "n1"); n.Status != store.NodeOnline || n.Address != "127.0.0.1:8001" {
		t.Fatalf("node after heartbeat = %+v", n)
	}

	// Silent past the timeout: offline, its VPSs lost (failed stays).
	e.clock.advance(6 * time.Second)
	if err := e.srv.checkNodes(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.st.Node(ctx, "n1"); n.Status != store.NodeOffline {
		t.Fatalf("node status %s, want offline", n.Status)
	}
	want := map[string]store.VPSStatus{"running": "lost", "stopped": "lost", "gone": "lost", "failed": "failed"}
	if got := statuses(); !maps.Equal(got, want) {
		t.Fatalf("after timeout: %v, want %v", got, want)
	}
	if msg := e.vps(t, "running").Message; !strings.Contains(msg, "was running") || !strings.Contains(msg, "n1") {
		t.Fatalf("lost message %q does not say what it was", msg)
	}
	if msg := e.vps(t, "stopped").Message; !strings.Contains(msg, "was stopped") {
		t.Fatalf("lost message %q", msg)
	}
	// Running again changes nothing.
	if err := e.srv.checkNodes(ctx); err != nil {
		t.Fatal(err)
	}
	// The API refuses node operations meanwhile.
	if _, err := c.StopVPS(ctx, "running"); StatusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("stop on offline node: %v, want 503", err)
	}

	// The node comes back and reports: states come back from the report.
	err := ag.Heartbeat(ctx, report(
		VPSState{TaskID: running.TaskID, Running: true, HostKeys: running.HostKeys},
		VPSState{TaskID: stopped.TaskID, Running: false},
		VPSState{TaskID: "1234567890123456789", Running: true}, // unknown: ignored
	))
	if err != nil {
		t.Fatalf("Heartbeat after outage: %v", err)
	}
	if n, _ := e.st.Node(ctx, "n1"); n.Status != store.NodeOnline || !n.LastHeartbeat.Equal(e.clock.now()) {
		t.Fatalf("node after comeback = %+v", n)
	}
	want = map[string]store.VPSStatus{"running": "running", "stopped": "stopped", "gone": "lost", "failed": "failed"}
	if got := statuses(); !maps.Equal(got, want) {
		t.Fatalf("after comeback: %v, want %v", got, want)
	}
	if v := e.vps(t, "running"); v.Message != "" {
		t.Fatalf("running VPS keeps message %q", v.Message)
	}
	if msg := e.vps(t, "gone").Message; !strings.Contains(msg, "no longer has") {
		t.Fatalf("gone message %q", msg)
	}
	if !strings.Contains(e.logs.String(), "1234567890123456789") {
		t.Fatal("unknown reported VPS not logged")
	}
	if e.vps(t, gone.TaskID).Status != store.StatusLost {
		t.Fatal("unreported VPS left lost")
	}
}

func TestReconcileHostKeyChange(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := e.createVPS(t, "alice", "box")
	e.clock.advance(time.Minute)
	if err := e.srv.checkNodes(ctx); err != nil {
		t.Fatal(err)
	}
	err := e.agentAPI().Register(ctx, report(VPSState{TaskID: v.TaskID, Running: true, HostKeys: []string{newPublicKey(t, "")}}))
	if err != nil {
		t.Fatal(err)
	}
	got := e.vps(t, "box")
	if got.Status != store.StatusRunning || got.Message != hostKeyChangedMsg || got.HostKeys[0] != v.HostKeys[0] {
		t.Fatalf("after report with another host key: %s %q %v", got.Status, got.Message, got.HostKeys)
	}
}

func TestReconcilePending(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := e.createVPS(t, "alice", "box")
	other := e.createVPS(t, "alice", "other")
	for _, id := range []string{v.TaskID, other.TaskID} {
		if _, err := e.st.UpdateVPS(ctx, id, func(x *store.VPS) error { x.Status = store.StatusPending; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// Reported running: running. Reported not running: left alone (the
	// API call that made it pending decides).
	err := e.agentAPI().Heartbeat(ctx, report(VPSState{TaskID: v.TaskID, Running: true}, VPSState{TaskID: other.TaskID}))
	if err != nil {
		t.Fatal(err)
	}
	if s := e.vps(t, "box").Status; s != store.StatusRunning {
		t.Fatalf("pending reported running: %s", s)
	}
	if s := e.vps(t, "other").Status; s != store.StatusPending {
		t.Fatalf("pending reported stopped: %s", s)
	}
	// Running records are not changed by a report (it may be stale).
	err = e.agentAPI().Heartbeat(ctx, report(VPSState{TaskID: v.TaskID, Running: false}))
	if err != nil {
		t.Fatal(err)
	}
	if s := e.vps(t, "box").Status; s != store.StatusRunning {
		t.Fatalf("running reported stopped: %s", s)
	}
}

func TestReportOtherNodesVPSIgnored(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := e.createVPS(t, "alice", "box")
	if _, err := e.st.UpdateVPS(ctx, v.TaskID, func(x *store.VPS) error { x.Status = store.StatusLost; return nil }); err != nil {
		t.Fatal(err)
	}
	rep := report(VPSState{TaskID: v.TaskID, Running: true})
	rep.Name = "n2"
	if err := e.agentAPI().Register(ctx, rep); err != nil {
		t.Fatal(err)
	}
	if s := e.vps(t, "box").Status; s != store.StatusLost {
		t.Fatalf("another node's report changed the VPS: %s", s)
	}
}

func TestRegisterAndHeartbeat(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ag := e.agentAPI()
	rep := report()
	rep.Name = "n2"
	if err := ag.Heartbeat(ctx, rep); StatusOf(err) != http.StatusNotFound {
		t.Fatalf("heartbeat before register: %v, want 404", err)
	}
	if _, err := e.st.Node(ctx, "n2"); err == nil {
		t.Fatal("heartbeat created the node")
	}
	if err := ag.Register(ctx, rep); err != nil {
		t.Fatalf("Register: %v", err)
	}
	n, err := e.st.Node(ctx, "n2")
	if err != nil || n.Status != store.NodeOnline || n.Cores != 8 || n.MemoryMB != 16384 || !n.RegisteredAt.Equal(e.clock.now()) {
		t.Fatalf("registered node = %+v, %v", n, err)
	}
	if err := ag.Heartbeat(ctx, rep); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	// The handoff socket is recorded with its boot id, and dropped when a
	// later report has none.
	rep.RelaySocket, rep.BootID = "/run/kohakuriver/relay-n2.sock", "0f5b2d0c-4f43-4c39-9d55-5c1a7f3b8e21"
	if err := ag.Heartbeat(ctx, rep); err != nil {
		t.Fatalf("Heartbeat with a relay socket: %v", err)
	}
	if n, _ := e.st.Node(ctx, "n2"); n.RelaySocket != rep.RelaySocket || n.BootID != rep.BootID {
		t.Fatalf("node after a report with a relay socket = %+v", n)
	}
	rep.RelaySocket, rep.BootID = "", ""
	if err := ag.Heartbeat(ctx, rep); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if n, _ := e.st.Node(ctx, "n2"); n.RelaySocket != "" || n.BootID != "" {
		t.Fatalf("node kept a relay socket the agent no longer reports: %+v", n)
	}

	bad := []struct {
		name string
		mut  func(r *AgentReport)
	}{
		{"no name", func(r *AgentReport) { r.Name = "" }},
		{"name with space", func(r *AgentReport) { r.Name = "a b" }},
		{"no address", func(r *AgentReport) { r.Address = "" }},
		{"address without port", func(r *AgentReport) { r.Address = "10.0.0.1" }},
		{"negative cores", func(r *AgentReport) { r.Cores = -1 }},
		{"relay socket without boot id", func(r *AgentReport) { r.RelaySocket = "/run/k/relay.sock" }},
		{"boot id without relay socket", func(r *AgentReport) { r.BootID = "0f5b2d0c" }},
		{"relative relay socket", func(r *AgentReport) { r.RelaySocket, r.BootID = "relay.sock", "0f5b2d0c" }},
		{"relay socket too long", func(r *AgentReport) { r.RelaySocket, r.BootID = "/"+strings.Repeat("s", 200), "0f5b2d0c" }},
		{"boot id with a newline", func(r *AgentReport) { r.RelaySocket, r.BootID = "/run/k/relay.sock", "0f5b\n2d0c" }},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			r := report()
			tt.mut(&r)
			if err := ag.Register(ctx, r); StatusOf(err) != http.StatusBadRequest {
				t.Fatalf("Register = %v, want 400", err)
			}
		})
	}
}

func TestRunNodeMonitor(t *testing.T) {
	e := newEnv(t)
	e.createVPS(t, "alice", "box")
	// The host was down for a minute: on start, the monitor first gives
	// every node a full timeout to report again.
	e.clock.advance(time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.srv.RunNodeMonitor(ctx) }()
	time.Sleep(300 * time.Millisecond) // several monitor ticks
	if st := e.vps(t, "box").Status; st != store.StatusRunning {
		t.Fatalf("VPS %s right after the monitor started; want running during the grace period", st)
	}
	e.clock.advance(time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for e.vps(t, "box").Status != store.StatusLost {
		if time.Now().After(deadline) {
			t.Fatal("monitor did not mark the VPS lost")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

func TestNodesEndpoints(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.addNode(t, "n2", store.NodeOffline)
	e.createVPS(t, "alice", "a")
	e.createVPS(t, "bob", "b")
	nodes, err := e.client("bob").Nodes(ctx)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("Nodes = %v, %v", nodes, err)
	}
	if nodes[0].Name != "n1" || nodes[0].VPSCount != 2 || nodes[0].Status != store.NodeOnline || nodes[1].VPSCount != 0 {
		t.Fatalf("nodes = %+v", nodes)
	}
	n, err := e.client("alice").Node(ctx, "n1")
	if err != nil || n.Name != "n1" || n.VPSCount != 2 || n.Address != "127.0.0.1:8001" {
		t.Fatalf("Node = %+v, %v", n, err)
	}
	if _, err := e.client("alice").Node(ctx, "nope"); StatusOf(err) != http.StatusNotFound {
		t.Fatalf("missing node: %v", err)
	}
}

func TestReconcileCutOffCreate(t *testing.T) {
	hostStart := time.Unix(2000, 0)
	tests := []struct {
		name       string
		updated    time.Time
		reported   bool
		running    bool
		wantStatus store.VPSStatus
		wantErr    error
	}{
		{"pending from before the restart, no container", hostStart.Add(-time.Minute), false, false, store.StatusFailed, nil},
		{"pending from this run, create in flight", hostStart.Add(time.Second), false, false, store.StatusPending, errNoChange},
		{"pending from before, container came up", hostStart.Add(-time.Minute), true, true, store.StatusRunning, nil},
		{"pending from before, container still starting", hostStart.Add(-time.Minute), true, false, store.StatusPending, errNoChange},
		{"pending from before, container never started", hostStart.Add(-createTimeout - time.Minute), true, false, store.StatusStopped, nil},
		{"pending from this run, container not running yet", hostStart.Add(time.Second), true, false, store.StatusPending, errNoChange},
	}
	now := hostStart.Add(time.Minute)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := store.VPS{TaskID: store.NewTaskID(), Status: store.StatusPending, UpdatedAt: tt.updated}
			err := reconcileVPS(&x, VPSState{TaskID: x.TaskID, Running: tt.running, HostKeys: []string{"ssh-ed25519 AAAA"}}, tt.reported, "n1", hostStart, now)
			if !errors.Is(err, tt.wantErr) || x.Status != tt.wantStatus {
				t.Fatalf("got status %s err %v; want %s %v", x.Status, err, tt.wantStatus, tt.wantErr)
			}
			if x.Status == store.StatusFailed && !strings.Contains(x.Message, "create it again") {
				t.Fatalf("message %q", x.Message)
			}
			if x.Status == store.StatusStopped && !strings.Contains(x.Message, "kohakuriver vps start") {
				t.Fatalf("message %q", x.Message)
			}
		})
	}
}

func TestReconcileRunningWithoutContainer(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.createVPS(t, "alice", "gone")
	// A fresh record missing from a report is left alone (the report may
	// predate the create)...
	if err := e.agentAPI().Heartbeat(ctx, report()); err != nil {
		t.Fatal(err)
	}
	if s := e.vps(t, "gone").Status; s != store.StatusRunning {
		t.Fatalf("fresh running VPS missing from a report: %s", s)
	}
	// ...an old one whose container is gone fails, saying so. (The store
	// stamps UpdatedAt with the real clock.)
	e.clock.advance(time.Since(e.clock.now()) + 10*time.Minute)
	if err := e.agentAPI().Heartbeat(ctx, report()); err != nil {
		t.Fatal(err)
	}
	v := e.vps(t, "gone")
	if v.Status != store.StatusFailed || !strings.Contains(v.Message, "no longer has this VPS's container") {
		t.Fatalf("old running VPS missing from its node: %s %q", v.Status, v.Message)
	}
	// The container shows up again (it was missing from a report by
	// mistake): the VPS runs again.
	if err := e.agentAPI().Heartbeat(ctx, report(VPSState{TaskID: v.TaskID, Running: true})); err != nil {
		t.Fatal(err)
	}
	if v := e.vps(t, "gone"); v.Status != store.StatusRunning || v.Message != "" {
		t.Fatalf("failed VPS reported running again: %s %q", v.Status, v.Message)
	}
}

// TestSecondAgentWithSameName: an agent reporting a node's name from
// another address while that node is online (a cloned machine keeps its
// hostname, the agent's default name) is refused and changes nothing; once
// the node has been silent for the heartbeat timeout, a moved node
// re-registers from its new address.
func TestSecondAgentWithSameName(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ag := e.agentAPI()
	if err := ag.Register(ctx, report()); err != nil {
		t.Fatal(err)
	}
	clone := report()
	clone.Address = "10.0.0.99:8001"
	for _, send := range []func(context.Context, AgentReport) error{ag.Register, ag.Heartbeat} {
		err := send(ctx, clone)
		if StatusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), "give each agent its own --name") {
			t.Fatalf("second agent named n1: %v, want 409 saying to rename it", err)
		}
	}
	if n, _ := e.st.Node(ctx, "n1"); n.Address != "127.0.0.1:8001" {
		t.Fatalf("the second agent took the node's address: %s", n.Address)
	}
	e.clock.advance(2 * e.srv.hbTimeout)
	if err := ag.Register(ctx, clone); err != nil {
		t.Fatalf("register from a new address after the node went silent: %v", err)
	}
	if n, _ := e.st.Node(ctx, "n1"); n.Address != clone.Address {
		t.Fatalf("node address %s after re-registering, want %s", n.Address, clone.Address)
	}
}
