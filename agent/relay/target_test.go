package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/netns"
)

// nsTargets reports every VPS of fakeTargets with a network namespace.
type nsTargets struct {
	*fakeTargets
	nsAddr string
}

func (n nsTargets) SSHTarget(ctx context.Context, taskID string) (Target, error) {
	addr, err := n.SSHAddr(ctx, taskID)
	if err != nil {
		return Target{}, err
	}
	return Target{Addr: addr, Namespace: "/run/test-ns/" + taskID, NamespaceAddr: n.nsAddr}, nil
}

// fakeNamespaceDial stands in for netns.Dial: it records its calls and
// either fails with err or dials addr in this namespace.
type fakeNamespaceDial struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (f *fakeNamespaceDial) dial(ctx context.Context, d *net.Dialer, nsPath, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	f.calls = append(f.calls, nsPath+" "+addr)
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return d.DialContext(ctx, network, addr)
}

func (f *fakeNamespaceDial) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func withNamespaceDial(f namespaceDial) Option {
	return func(h *Handler) error { h.nsDial = f; return nil }
}

// startNamedTarget is a stand-in sshd that greets with its name.
func startNamedTarget(t *testing.T, name string) string {
	return startTarget(t, func(c *net.TCPConn) { fmt.Fprintln(c, name) })
}

func greetingThrough(t *testing.T, agentAddr string) string {
	t.Helper()
	c := dial(t, agentAddr, taskA)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading through the relay: %v", err)
	}
	return strings.TrimSpace(line)
}

func TestRelayDialsInsideTheNamespaceFirst(t *testing.T) {
	byAddr, inNS := startNamedTarget(t, "container address"), startNamedTarget(t, "namespace loopback")
	nd := &fakeNamespaceDial{}
	targets := nsTargets{&fakeTargets{addrs: map[string]string{taskA: byAddr}}, inNS}
	a := serveNS(t, targets, nd)
	if got := greetingThrough(t, a.addr); got != "namespace loopback" {
		t.Fatalf("relay reached %q; want the sshd inside the namespace", got)
	}
	if nd.count() != 1 || nd.calls[0] != "/run/test-ns/"+taskA+" "+inNS {
		t.Fatalf("namespace dials %q; want one to %s in /run/test-ns/%s", nd.calls, inNS, taskA)
	}
}

func TestRelayNamespaceFallbacks(t *testing.T) {
	byAddr, inNS := startNamedTarget(t, "container address"), startNamedTarget(t, "namespace loopback")
	tests := []struct {
		name      string
		err       error
		wantCalls int // after two relays
		wantLog   string
	}{
		// Not permitted: it will not get better, so only the first
		// relay tries, and the agent says so once.
		{"no privileges", fmt.Errorf("netns: enter: %w: %w", netns.ErrPermission, syscall.EPERM), 1, "cannot enter VPS network namespaces"},
		{"not linux", netns.ErrUnsupported, 1, "VPS network namespaces are a Linux feature"},
		// Anything else (an sshd on the container address only, a
		// container just gone) is tried again next time.
		{"refused", syscall.ECONNREFUSED, 2, "relay namespace dial failed"},
		{"host networking", netns.ErrSameNamespace, 2, "relay namespace dial failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nd := &fakeNamespaceDial{err: tt.err}
			a := serveNS(t, nsTargets{&fakeTargets{addrs: map[string]string{taskA: byAddr}}, inNS}, nd)
			for i := range 2 {
				if got := greetingThrough(t, a.addr); got != "container address" {
					t.Fatalf("relay %d reached %q; want the container address", i, got)
				}
			}
			if nd.count() != tt.wantCalls {
				t.Errorf("namespace dials: %d; want %d", nd.count(), tt.wantCalls)
			}
			// Said once either way: at Info, and retries at Debug.
			logs := a.logs.String()
			info := 0
			for _, line := range strings.Split(logs, "\n") {
				if strings.Contains(line, "level=INFO") && strings.Contains(line, tt.wantLog) {
					info++
				}
			}
			if n := info; n != 1 {
				t.Errorf("%q logged at Info %d times; want once:\n%s", tt.wantLog, n, logs)
			}
			if n := strings.Count(logs, tt.wantLog); n != tt.wantCalls {
				t.Errorf("%q logged %d times; want %d:\n%s", tt.wantLog, n, tt.wantCalls, logs)
			}
		})
	}
}

// TestRelayNamespaceDialCancelled: a dial that ran out of time is not
// retried at the container address (the request is over).
func TestRelayNamespaceDialCancelled(t *testing.T) {
	byAddr := startNamedTarget(t, "container address")
	block := func(ctx context.Context, _ *net.Dialer, _, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	targets := nsTargets{&fakeTargets{addrs: map[string]string{taskA: byAddr}}, "127.0.0.1:1"}
	a := serveAgentWith(t, targets, WithDialTimeout(200*time.Millisecond), withNamespaceDial(block))
	d := &Dialer{Token: testToken, Timeout: 5 * time.Second}
	_, err := d.Dial(t.Context(), a.addr, taskA)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Dial: %v; want ErrUnreachable (502)", err)
	}
	if strings.Contains(a.logs.String(), "target="+byAddr) {
		t.Errorf("the container address was dialled after the namespace dial timed out:\n%s", a.logs)
	}
}

// TestRelayNamespaceDialHangs: a dial inside the container that hangs (a
// firewall there dropping loopback) gives up after its own bound, and the
// container's address gets the rest of the request's time.
func TestRelayNamespaceDialHangs(t *testing.T) {
	byAddr := startNamedTarget(t, "container address")
	nd := &fakeNamespaceDial{}
	hang := func(ctx context.Context, d *net.Dialer, nsPath, network, addr string) (net.Conn, error) {
		nd.mu.Lock()
		nd.calls = append(nd.calls, nsPath)
		nd.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	targets := nsTargets{&fakeTargets{addrs: map[string]string{taskA: byAddr}}, "127.0.0.1:1"}
	a := serveAgentWith(t, targets, WithDialTimeout(30*time.Second), withNamespaceDial(hang),
		func(h *Handler) error { h.nsDialTimeout = 50 * time.Millisecond; return nil })
	if got := greetingThrough(t, a.addr); got != "container address" {
		t.Fatalf("relay reached %q; want the container address after the namespace dial gave up", got)
	}
	if nd.count() != 1 {
		t.Fatalf("namespace dials: %d; want 1", nd.count())
	}
	if !strings.Contains(a.logs.String(), "relay namespace dial failed") {
		t.Errorf("the hung namespace dial was not logged:\n%s", a.logs)
	}
}

// TestRelayWithoutNamespaceTargets: plain Targets never reach the
// namespace dialer.
func TestRelayWithoutNamespaceTargets(t *testing.T) {
	byAddr := startNamedTarget(t, "container address")
	nd := &fakeNamespaceDial{}
	a := serveAgentWith(t, &fakeTargets{addrs: map[string]string{taskA: byAddr}}, withNamespaceDial(nd.dial))
	if got := greetingThrough(t, a.addr); got != "container address" {
		t.Fatalf("relay reached %q", got)
	}
	if nd.count() != 0 {
		t.Fatalf("namespace dials %q for Targets without SSHTarget", nd.calls)
	}
}

func serveNS(t *testing.T, targets nsTargets, nd *fakeNamespaceDial) *testAgent {
	return serveAgentWith(t, targets, withNamespaceDial(nd.dial))
}
