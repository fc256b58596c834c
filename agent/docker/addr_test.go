package docker

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
)

// TestSSHAddrChoice covers the decisions that need no probe (no traffic
// leaves the test); TestCreateAndConnect covers the probe on a real engine.
func TestSSHAddrChoice(t *testing.T) {
	running := func(nets map[string]*network.EndpointSettings) container.InspectResponse {
		return container.InspectResponse{
			Name:  "/kohakuriver-vps-x",
			State: &container.State{Status: "running", Running: true},
			NetworkSettings: &container.NetworkSettings{
				Ports:    network.PortMap{sshPort: {{HostIP: loopback, HostPort: "32768"}}},
				Networks: nets,
			},
		}
	}
	bridge := map[string]*network.EndpointSettings{
		"zz":     {IPAddress: netip.MustParseAddr("172.18.0.9")},
		"bridge": {IPAddress: netip.MustParseAddr("172.17.0.5")},
	}
	tests := []struct {
		name  string
		reach int32
		c     container.InspectResponse
		want  string
	}{
		{"reachable networks: the first network by name", reachYes, running(bridge), "172.17.0.5:22"},
		{"unreachable networks: the published port", reachNo, running(bridge), "127.0.0.1:32768"},
		{"no network address: the published port", reachUnknown, running(map[string]*network.EndpointSettings{"none": {}}), "127.0.0.1:32768"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &Runtime{log: slog.New(slog.DiscardHandler)}
			rt.probe = func(_ context.Context, addr string) error {
				t.Errorf("probed %s: these decisions need no probe", addr)
				return errors.New("no probe here")
			}
			rt.networkReach.Store(tt.reach)
			rt.reachNoAt.Store(time.Now().UnixNano())
			got, err := rt.sshAddrOf(context.Background(), tt.c)
			if err != nil || got != tt.want {
				t.Fatalf("sshAddrOf = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	stopped := running(bridge)
	stopped.State = &container.State{Status: "exited"}
	rt := &Runtime{log: slog.New(slog.DiscardHandler)}
	rt.networkReach.Store(reachYes)
	if _, err := rt.sshAddrOf(context.Background(), stopped); err == nil {
		t.Fatal("an address for a stopped container")
	}
}

// TestSSHAddrProbes: how probe answers decide where the relay dials, with
// the probe replaced (no traffic leaves the test).
func TestSSHAddrProbes(t *testing.T) {
	c := container.InspectResponse{
		Name:  "/kohakuriver-vps-x",
		State: &container.State{Status: "running", Running: true},
		NetworkSettings: &container.NetworkSettings{
			Ports:    network.PortMap{sshPort: {{HostIP: loopback, HostPort: "32768"}}},
			Networks: map[string]*network.EndpointSettings{"bridge": {IPAddress: netip.MustParseAddr("172.17.0.5")}},
		},
	}
	const own, published = "172.17.0.5:22", "127.0.0.1:32768"
	tests := []struct {
		name      string
		answers   map[string][]bool // per address, the answer of each probe in turn (then no)
		want      string
		wantReach int32
	}{
		{"own address answers", map[string][]bool{own: {true}}, own, reachYes},
		{"sshd not up yet: undecided", map[string][]bool{}, published, reachUnknown},
		{"sshd came up between the probes", map[string][]bool{own: {false, true}, published: {true}}, own, reachYes},
		{"only the published port answers", map[string][]bool{published: {true}}, published, reachNo},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &Runtime{log: slog.New(slog.DiscardHandler)}
			rt.probe = func(_ context.Context, addr string) error {
				a := tt.answers[addr]
				if len(a) == 0 {
					return errors.New("no answer")
				}
				ok := a[0]
				tt.answers[addr] = a[1:]
				if !ok {
					return errors.New("no answer")
				}
				return nil
			}
			got, err := rt.sshAddrOf(context.Background(), c)
			if err != nil || got != tt.want || rt.networkReach.Load() != tt.wantReach {
				t.Fatalf("sshAddrOf = %q, %v, reach %d; want %q, reach %d", got, err, rt.networkReach.Load(), tt.want, tt.wantReach)
			}
		})
	}

	// A "no" holds for reachRecheck, then the own address is probed again.
	rt := &Runtime{log: slog.New(slog.DiscardHandler)}
	probes := 0
	rt.probe = func(context.Context, string) error { probes++; return nil }
	rt.networkReach.Store(reachNo)
	rt.reachNoAt.Store(time.Now().UnixNano())
	if got, _ := rt.sshAddrOf(context.Background(), c); got != published || probes != 0 {
		t.Fatalf("fresh no: %q after %d probes, want %q without probing", got, probes, published)
	}
	rt.reachNoAt.Store(time.Now().Add(-reachRecheck - time.Second).UnixNano())
	if got, _ := rt.sshAddrOf(context.Background(), c); got != own || rt.networkReach.Load() != reachYes {
		t.Fatalf("stale no: %q, reach %d; want %q, reachable", got, rt.networkReach.Load(), own)
	}
}

// TestSandboxNamespace: the relay gets a namespace to dial in only for a
// container with a network namespace of its own.
func TestSandboxNamespace(t *testing.T) {
	const key = "/var/run/docker/netns/0123456789ab"
	inspect := func(mode container.NetworkMode, nets map[string]*network.EndpointSettings, sandbox string) container.InspectResponse {
		return container.InspectResponse{
			State:           &container.State{Status: "running", Running: true},
			HostConfig:      &container.HostConfig{NetworkMode: mode},
			NetworkSettings: &container.NetworkSettings{SandboxKey: sandbox, Networks: nets},
		}
	}
	bridge := map[string]*network.EndpointSettings{"bridge": {IPAddress: netip.MustParseAddr("172.17.0.5")}}
	tests := []struct {
		name string
		c    container.InspectResponse
		want string
	}{
		{"bridge network", inspect("bridge", bridge, key), key},
		{"default mode", inspect("default", bridge, key), key},
		{"user-defined network", inspect("kohaku-net", bridge, key), key},
		// Host networking: the namespace is the node's (and its loopback
		// sshd the node's), even if an engine reported an address.
		{"host networking", inspect("host", bridge, "/var/run/docker/netns/default"), ""},
		// Another container's namespace: its loopback sshd is that
		// container's.
		{"another container's namespace", inspect("container:0123", bridge, key), ""},
		{"no network", inspect("none", nil, key), ""},
		{"no address of its own", inspect("bridge", map[string]*network.EndpointSettings{"bridge": {}}, key), ""},
		{"no sandbox key", inspect("bridge", bridge, ""), ""},
		{"relative sandbox key", inspect("bridge", bridge, "netns/0123"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := sandboxNamespace(tt.c)
			if got != tt.want || ok != (tt.want != "") {
				t.Fatalf("sandboxNamespace = %q, %v; want %q", got, ok, tt.want)
			}
		})
	}
}
