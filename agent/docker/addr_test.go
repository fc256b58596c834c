package docker

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"

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
			rt.networkReach.Store(tt.reach)
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
