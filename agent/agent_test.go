package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/agent/control"
	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/agent/relay"
)

func TestAdvertiseAddr(t *testing.T) {
	t.Parallel()
	tcp := func(ip string, port int) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	const (
		remoteHost = "http://10.0.0.1:8000"
		localHost  = "http://127.0.0.1:8000"
	)
	for _, tc := range []struct {
		name       string
		configured string
		hostURL    string
		listen     net.Addr
		want       string // "" = an error is expected
		wantErr    string
	}{
		// A wildcard listener with no --advertise and a remote host: the
		// host would dial its own machine.
		{"ipv6 wildcard, remote host", "", remoteHost, tcp("::", 8001), "", "--advertise"},
		{"ipv4 wildcard, remote host", "", remoteHost, tcp("0.0.0.0", 8001), "", "--advertise"},
		{"nil ip (\":8001\"), remote host", "", remoteHost, &net.TCPAddr{Port: 8001}, "", "--advertise"},
		{"wildcard, remote host by name", "", "http://gpu-host.example:8000", tcp("::", 8001), "", "KOHAKURIVER_AGENT_ADVERTISE"},
		// Single-machine setups (kohakuriver up): advertise loopback.
		{"ipv6 wildcard, loopback host", "", localHost, tcp("::", 8001), "127.0.0.1:8001", ""},
		{"ipv4 wildcard, loopback host", "", localHost, tcp("0.0.0.0", 8002), "127.0.0.1:8002", ""},
		{"wildcard, localhost host", "", "http://localhost:8000", tcp("::", 8001), "127.0.0.1:8001", ""},
		{"ipv6 wildcard, ::1 host", "", "http://[::1]:8000", tcp("::", 8001), "[::1]:8001", ""},
		{"ipv4 wildcard, ::1 host", "", "http://[::1]:8000", tcp("0.0.0.0", 8001), "127.0.0.1:8001", ""},
		{"kohakuriver up", "", "http://127.0.0.1:8000", tcp("127.0.0.1", 8001), "127.0.0.1:8001", ""},
		// A concrete listener address is advertised as is.
		{"concrete listener, remote host", "", remoteHost, tcp("10.0.0.5", 8001), "10.0.0.5:8001", ""},
		{"loopback listener, remote host", "", remoteHost, tcp("127.0.0.1", 8001), "", "--advertise"},
		// An explicit --advertise.
		{"advertise, remote host", "10.0.0.5:8001", remoteHost, tcp("::", 8001), "10.0.0.5:8001", ""},
		{"advertise name, remote host", "node1.lan:8001", remoteHost, tcp("::", 8001), "node1.lan:8001", ""},
		{"advertise, loopback host", "10.0.0.5:8001", localHost, tcp("::", 8001), "10.0.0.5:8001", ""},
		{"advertise loopback, loopback host", "127.0.0.1:8001", localHost, tcp("::", 8001), "127.0.0.1:8001", ""},
		{"advertise loopback, remote host", "127.0.0.1:8001", remoteHost, tcp("::", 8001), "", "loopback"},
		{"advertise ::1, remote host", "[::1]:8001", remoteHost, tcp("::", 8001), "", "loopback"},
		{"advertise localhost, remote host", "localhost:8001", remoteHost, tcp("::", 8001), "", "loopback"},
		{"advertise wildcard", "0.0.0.0:8001", remoteHost, tcp("::", 8001), "", "--advertise"},
		{"advertise without port", "10.0.0.5", remoteHost, tcp("::", 8001), "", "host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := advertiseAddr(tc.configured, tc.hostURL, tc.listen)
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Fatalf("advertiseAddr(%q, %q, %v) = %q, %v; want %q", tc.configured, tc.hostURL, tc.listen, got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("advertiseAddr(%q, %q, %v) = %q, %v; want an error naming %q", tc.configured, tc.hostURL, tc.listen, got, err, tc.wantErr)
			}
		})
	}
}

// nopRuntime satisfies control.Runtime; Listen never calls it.
type nopRuntime struct{ control.Runtime }

func newTestAgent(t *testing.T, listen, advertise, hostURL string) *Agent {
	t.Helper()
	a, err := New(Config{
		Name: "n1", ListenAddr: listen, AdvertiseAddr: advertise, HostURL: hostURL,
		ClusterToken: strings.Repeat("t", 64), Runtime: nopRuntime{},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func TestListenRefusesWildcardWithoutAdvertise(t *testing.T) {
	t.Parallel()
	// A wildcard listener is what --listen :8001 (the default) gives.
	a := newTestAgent(t, ":0", "", "http://10.0.0.1:8000")
	err := a.Listen()
	if err == nil || !strings.Contains(err.Error(), "--advertise") {
		t.Fatalf("Listen = %v, want an error naming --advertise", err)
	}
	if a.Addr() != nil {
		t.Fatalf("listener kept after the refusal: %v", a.Addr())
	}
}

func TestListenAdvertisesLoopbackForLoopbackHost(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, ":0", "", "http://127.0.0.1:8000")
	if err := a.Listen(); err != nil {
		t.Fatal(err)
	}
	defer a.ln.Close()
	port := a.Addr().(*net.TCPAddr).Port
	if want := "127.0.0.1:" + strconv.Itoa(port); a.cfg.AdvertiseAddr != want {
		t.Fatalf("advertise %q, want %q", a.cfg.AdvertiseAddr, want)
	}
}

// emptyRuntime runs no containers.
type emptyRuntime struct{ control.Runtime }

func (emptyRuntime) List(context.Context) ([]docker.Info, error) { return nil, nil }

func TestRelaySocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "kr-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	start := func(socket string) *Agent {
		t.Helper()
		a, err := New(Config{
			Name: "n1", ListenAddr: "127.0.0.1:0", HostURL: "http://127.0.0.1:8000", RelaySocket: socket,
			ClusterToken: strings.Repeat("t", 64), Runtime: emptyRuntime{},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Listen(); err != nil {
			t.Fatalf("Listen: %v", err)
		}
		t.Cleanup(func() { a.ln.Close(); a.Close() })
		return a
	}

	path := filepath.Join(dir, "relay.sock")
	a := start(path)
	if got := a.LocalSocket(); got != path {
		t.Fatalf("LocalSocket = %q, want %q", got, path)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("handoff socket: %v %v", fi, err)
	}
	rep, err := a.report(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if boot := relay.BootID(); boot != "" && (rep.RelaySocket != path || rep.BootID != boot) {
		t.Fatalf("report names socket %q boot id %q, want %q and %q", rep.RelaySocket, rep.BootID, path, boot)
	}
	a.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("handoff socket after Close: %v, want it removed", err)
	}

	// A socket that cannot be set up costs the handoff, not the agent.
	b := start("relative.sock")
	if b.LocalSocket() != "" {
		t.Fatalf("LocalSocket = %q for an unusable path", b.LocalSocket())
	}
	if rep, err := b.report(t.Context()); err != nil || rep.RelaySocket != "" || rep.BootID != "" {
		t.Fatalf("report without a socket = %+v, %v", rep, err)
	}
}
