package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/agent/relay"
	"github.com/kohakuriver/kohakuriver/gateway"
	"github.com/kohakuriver/kohakuriver/store"
)

const hopTestToken = "hop-test-token-0123456789abcdef0123"

// countingTargets resolves every task id to addr, or fails with err, and
// counts lookups.
type countingTargets struct {
	addr    string
	err     error
	lookups atomic.Int32
}

func (c *countingTargets) SSHAddr(context.Context, string) (string, error) {
	c.lookups.Add(1)
	return c.addr, c.err
}

// serveRelay serves a relay Handler over targets on ln, for the cluster of
// token, until the test ends.
func serveRelay(t *testing.T, ln net.Listener, targets relay.Targets, token string) {
	t.Helper()
	v, err := clusterauth.NewVerifier(token)
	if err != nil {
		t.Fatal(err)
	}
	h, err := relay.NewHandler(v, targets, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := relay.NewHTTPServer(h, nil)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done; h.Close() })
}

// sshdStandIn accepts connections and holds them until the test ends.
func sshdStandIn(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(conns)
		for c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// stuckAgent listens on a unix socket at path and never answers.
func stuckAgent(t *testing.T, path string) string {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(conns)
				return
			}
			conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range conns {
			c.Close()
		}
	})
	return path
}

// TestRelayHopHandoffRules: which way relayHop reaches a VPS, and which
// failed handoffs it retries over the TCP relay.
func TestRelayHopHandoffRules(t *testing.T) {
	sshd := sshdStandIn(t)
	tcpTargets := &countingTargets{addr: sshd}
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveRelay(t, tcpLn, tcpTargets, hopTestToken)

	dir, err := os.MkdirTemp("", "kr-hop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	local := func(name string, targets relay.Targets, token string) string {
		path := filepath.Join(dir, name+".sock")
		ln, err := relay.ListenLocal(path)
		if err != nil {
			t.Fatal(err)
		}
		serveRelay(t, ln, targets, token)
		return path
	}
	good := local("good", &countingTargets{addr: sshd}, hopTestToken)
	stopped := local("stopped", &countingTargets{err: fmt.Errorf("stopped: %w", relay.ErrNotRunning)}, hopTestToken)
	other := local("other", &countingTargets{err: fmt.Errorf("not here: %w", relay.ErrUnknownVPS)}, hopTestToken)
	otherCluster := local("cluster", &countingTargets{addr: sshd}, "another-cluster-token-0123456789abcd")
	stuck := stuckAgent(t, filepath.Join(dir, "stuck.sock"))

	hop, err := newRelayHop(prometheus.NewRegistry(), hopTestToken, "boot-a", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	hop.dialer.Timeout = 2 * time.Second
	v := store.VPS{TaskID: "1234567890123456789"}
	cases := []struct {
		name     string
		socket   string
		bootID   string
		handoff  bool  // the conn is the sshd socket itself
		wantErr  error // else success
		tcpTried bool
		fellBack bool // counted in handoff_fallbacks_total
		cancel   bool // the caller is gone before the dial
	}{
		{"same machine", good, "boot-a", true, nil, false, false, false},
		{"another machine", good, "boot-b", false, nil, true, false, false},
		{"no socket reported", "", "", false, nil, true, false, false},
		{"socket gone", filepath.Join(dir, "gone.sock"), "boot-a", false, nil, true, true, false},
		{"another agent's socket", other, "boot-a", false, nil, true, true, false},
		{"another cluster's agent", otherCluster, "boot-a", false, nil, true, true, false},
		{"vps stopped", stopped, "boot-a", false, gateway.ErrVPSNotRunning, false, false, false},
		{"agent stuck", stuck, "boot-a", false, gateway.ErrNodeUnreachable, false, false, false},
		{"caller gone", good, "boot-a", false, context.Canceled, false, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := tcpTargets.lookups.Load()
			handoffs, relays := testutil.ToFloat64(hop.dials.WithLabelValues("handoff")), testutil.ToFloat64(hop.dials.WithLabelValues("relay"))
			fallbacks := testutil.ToFloat64(hop.fallbacks)
			node := store.Node{Name: "n", Address: tcpLn.Addr().String(), RelaySocket: tc.socket, BootID: tc.bootID}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tc.cancel {
				cancel()
			}
			c, err := hop.DialVPS(ctx, v, node)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("DialVPS: %v, want %v", err, tc.wantErr)
				}
			} else {
				if err != nil {
					t.Fatalf("DialVPS: %v", err)
				}
				defer c.Close()
				_, direct := c.(*net.TCPConn)
				if direct != tc.handoff {
					t.Fatalf("DialVPS returned %T; handed off = %v, want %v", c, direct, tc.handoff)
				}
				if got := c.RemoteAddr().String(); tc.handoff && got != sshd {
					t.Fatalf("handed-off socket goes to %s, want the sshd %s", got, sshd)
				}
			}
			if tried := tcpTargets.lookups.Load() > before; tried != tc.tcpTried {
				t.Fatalf("TCP relay used: %v, want %v", tried, tc.tcpTried)
			}
			// The metrics say the same.
			dh := testutil.ToFloat64(hop.dials.WithLabelValues("handoff")) - handoffs
			dr := testutil.ToFloat64(hop.dials.WithLabelValues("relay")) - relays
			df := testutil.ToFloat64(hop.fallbacks) - fallbacks
			wantH, wantR, wantF := 0.0, 0.0, 0.0
			if tc.wantErr == nil && tc.handoff {
				wantH = 1
			}
			if tc.wantErr == nil && !tc.handoff {
				wantR = 1
			}
			if tc.fellBack {
				wantF = 1
			}
			if dh != wantH || dr != wantR || df != wantF {
				t.Fatalf("metrics moved by handoff %v relay %v fallbacks %v; want %v %v %v", dh, dr, df, wantH, wantR, wantF)
			}
		})
	}
}
