package api

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

// fakeAgents is a NodeAgent that records calls and answers from its
// fields. Set fields before the call they affect (under no lock: tests set
// them between calls).
type fakeAgents struct {
	mu    sync.Mutex
	calls []string // "op taskid"
	specs map[string]VPSSpec
	keys  map[string][]string // last SetKeys lines per task id
	// hostKeys are reported by create, start and restart.
	hostKeys []string
	// fail makes an op ("create", "start", ...) return this error.
	fail map[string]error
	// notRunning makes create/start/restart report Running false.
	notRunning bool
	// stopGate, if set, holds StopVPS until it is closed.
	stopGate chan struct{}
	// exec runs Exec.
	exec func(ctx context.Context, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
}

var _ NodeAgent = (*fakeAgents)(nil)

func newFakeAgents(tb testing.TB) *fakeAgents {
	return &fakeAgents{
		specs:    map[string]VPSSpec{},
		keys:     map[string][]string{},
		hostKeys: []string{newPublicKey(tb, "root@vps")},
		fail:     map[string]error{},
	}
}

func (f *fakeAgents) record(op, taskID string) (VPSState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, op+" "+taskID)
	if err := f.fail[op]; err != nil {
		return VPSState{}, err
	}
	st := VPSState{TaskID: taskID, Running: !f.notRunning, HostKeys: slices.Clone(f.hostKeys)}
	if f.notRunning {
		st.Message = "exited with code 1"
	}
	return st, nil
}

// called returns the recorded calls of op, as task ids.
func (f *fakeAgents) called(op string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, c := range f.calls {
		var o, id string
		fmt.Sscan(c, &o, &id)
		if o == op {
			ids = append(ids, id)
		}
	}
	return ids
}

func (f *fakeAgents) set(fn func(f *fakeAgents)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeAgents) CreateVPS(ctx context.Context, node store.Node, spec VPSSpec) (VPSState, error) {
	f.mu.Lock()
	f.specs[spec.TaskID] = spec
	f.mu.Unlock()
	st, err := f.record("create", spec.TaskID)
	return st, err
}

func (f *fakeAgents) StartVPS(ctx context.Context, node store.Node, taskID string) (VPSState, error) {
	st, err := f.record("start", taskID)
	return st, err
}

func (f *fakeAgents) StopVPS(ctx context.Context, node store.Node, taskID string) error {
	f.mu.Lock()
	gate := f.stopGate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	_, err := f.record("stop", taskID)
	return err
}

func (f *fakeAgents) RestartVPS(ctx context.Context, node store.Node, taskID string) (VPSState, error) {
	st, err := f.record("restart", taskID)
	return st, err
}

func (f *fakeAgents) DeleteVPS(ctx context.Context, node store.Node, taskID string) error {
	_, err := f.record("delete", taskID)
	return err
}

func (f *fakeAgents) SetKeys(ctx context.Context, node store.Node, taskID, loginUser string, authorizedKeys []string) error {
	_, err := f.record("setkeys", taskID)
	if err == nil {
		f.mu.Lock()
		f.keys[taskID] = slices.Clone(authorizedKeys)
		f.mu.Unlock()
	}
	return err
}

func (f *fakeAgents) Exec(ctx context.Context, node store.Node, taskID string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if _, err := f.record("exec", taskID); err != nil {
		return -1, err
	}
	f.mu.Lock()
	fn := f.exec
	f.mu.Unlock()
	if fn == nil {
		return 0, nil
	}
	return fn(ctx, cmd, stdin, stdout, stderr)
}

// specOf returns the spec the node got for taskID.
func (f *fakeAgents) specOf(taskID string) VPSSpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.specs[taskID]
}

// keysOf returns the last authorized_keys the node got for taskID.
func (f *fakeAgents) keysOf(taskID string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.keys[taskID]
}

// allCalls returns every recorded call.
func (f *fakeAgents) allCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// reportedHostKeys returns the host keys the fake reports.
func (f *fakeAgents) reportedHostKeys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.hostKeys)
}
