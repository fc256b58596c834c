package agent

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/kohakuriver/kohakuriver/agent/control"
	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/agent/relay"
)

// targetRuntime answers SSHAddr and, when ns is set, SSHTarget.
type targetRuntime struct {
	control.Runtime
	target docker.SSHTarget
	err    error
}

func (r targetRuntime) SSHAddr(context.Context, string) (string, error) { return r.target.Addr, r.err }

type nsTargetRuntime struct{ targetRuntime }

func (r nsTargetRuntime) SSHTarget(context.Context, string) (docker.SSHTarget, error) {
	return r.target, r.err
}

// TestRelayTargets: the relay gets the runtime's namespace when it has one,
// and the relay's sentinels for the runtime's errors either way.
func TestRelayTargets(t *testing.T) {
	st := docker.SSHTarget{Addr: "172.17.0.5:22", Namespace: "/var/run/docker/netns/abc", NamespaceAddr: "127.0.0.1:22"}
	var _ relay.NamespaceTargets = relayTargets{}

	got, err := relayTargets{nsTargetRuntime{targetRuntime{target: st}}}.SSHTarget(t.Context(), "1")
	if err != nil || got != (relay.Target{Addr: st.Addr, Namespace: st.Namespace, NamespaceAddr: st.NamespaceAddr}) {
		t.Errorf("with namespaces: %+v, %v", got, err)
	}
	got, err = relayTargets{targetRuntime{target: st}}.SSHTarget(t.Context(), "1")
	if err != nil || got != (relay.Target{Addr: st.Addr}) {
		t.Errorf("runtime without SSHTarget: %+v, %v; want the address only", got, err)
	}
	for _, tc := range []struct {
		err  error
		want error
	}{
		{fmt.Errorf("task 1: %w", docker.ErrNotFound), relay.ErrUnknownVPS},
		{fmt.Errorf("task 1: %w", docker.ErrNotRunning), relay.ErrNotRunning},
	} {
		for _, rt := range []control.Runtime{targetRuntime{err: tc.err}, nsTargetRuntime{targetRuntime{err: tc.err}}} {
			if _, err := (relayTargets{rt}).SSHTarget(t.Context(), "1"); !errors.Is(err, tc.want) {
				t.Errorf("%T SSHTarget: %v; want %v", rt, err, tc.want)
			}
			if _, err := (relayTargets{rt}).SSHAddr(t.Context(), "1"); !errors.Is(err, tc.want) {
				t.Errorf("%T SSHAddr: %v; want %v", rt, err, tc.want)
			}
		}
	}
	other := errors.New("engine down")
	if _, err := (relayTargets{nsTargetRuntime{targetRuntime{err: other}}}).SSHTarget(t.Context(), "1"); !errors.Is(err, other) || errors.Is(err, relay.ErrUnknownVPS) {
		t.Errorf("other error: %v", err)
	}
}
