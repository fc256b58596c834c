package docker

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"time"

	"github.com/moby/moby/api/types/container"
)

// Where the relay dials a VPS's sshd.
//
// Every byte of a session crosses the node twice in the relay (in from the
// gateway, out to the sshd). Dialing the published loopback port adds
// Docker's userland proxy (docker-proxy), a third process copying every
// byte; dialing the container's own address on its Docker network does
// not. The published port stays as the fallback for engines whose
// container networks the node cannot reach (rootless Docker, Docker
// Desktop). The runtime learns which from the first container whose sshd
// answers on its published port but, probed before and after that, not on
// its own address; a "no" is checked again after reachRecheck.
//
// Better still, when the agent may enter namespaces: SSHTarget also reports
// the container's own network namespace (its sandbox key), and the relay
// dials 127.0.0.1:22 inside it (package agent/netns), which is plain
// loopback instead of the bridge, a veth pair and connection tracking. The
// address above is then the fallback.

// Reachability of container addresses from the agent, learnt once. A "no"
// is probed again after reachRecheck: it costs every relay a docker-proxy,
// and a VPS whose sshd was slow to a probe must not lock the node into it.
const (
	reachUnknown int32 = iota
	reachYes
	reachNo

	reachRecheck = 10 * time.Minute
)

// sshAddrOf returns where to dial the running container's sshd: its
// network address when container networks are reachable from here, else
// its published port. The error wraps ErrNotRunning when it is not running.
func (rt *Runtime) sshAddrOf(ctx context.Context, c container.InspectResponse) (string, error) {
	published, err := publishedSSHAddr(c)
	if err != nil {
		return "", err
	}
	own, ok := networkSSHAddr(c)
	if !ok {
		return published, nil
	}
	switch rt.networkReach.Load() {
	case reachYes:
		return own, nil
	case reachNo:
		if time.Since(time.Unix(0, rt.reachNoAt.Load())) < reachRecheck {
			return published, nil
		}
		rt.networkReach.CompareAndSwap(reachNo, reachUnknown)
	}
	probe := rt.probe
	if probe == nil {
		probe = readBanner
	}
	if probe(ctx, own) == nil {
		rt.reachable(own)
		return own, nil
	}
	// Decide only when the published port answers (an sshd that is not
	// up yet answers on neither), and only if the own address still does
	// not answer after that (the sshd may have come up in between).
	if probe(ctx, published) != nil {
		return published, nil
	}
	if probe(ctx, own) == nil {
		rt.reachable(own)
		return own, nil
	}
	if rt.networkReach.CompareAndSwap(reachUnknown, reachNo) {
		rt.reachNoAt.Store(time.Now().UnixNano())
		rt.log.Warn("container addresses are not reachable from this node; relaying through published ports", "tried", own, "published", published)
	}
	return published, nil
}

// reachable records that container addresses answer.
func (rt *Runtime) reachable(example string) {
	if rt.networkReach.CompareAndSwap(reachUnknown, reachYes) {
		rt.log.Info("container addresses are reachable: no userland proxy between the relay and VPS sshds", "example", example)
	}
}

// networkSSHAddr returns the container's sshd on its address in one of its
// Docker networks (the first by name, for a stable choice), if it has one.
func networkSSHAddr(c container.InspectResponse) (string, bool) {
	if c.NetworkSettings == nil {
		return "", false
	}
	names := make([]string, 0, len(c.NetworkSettings.Networks))
	for name := range c.NetworkSettings.Networks {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ep := c.NetworkSettings.Networks[name]
		if ep == nil || !usableAddr(ep.IPAddress) {
			continue
		}
		return net.JoinHostPort(ep.IPAddress.String(), sshPort.Port()), true
	}
	return "", false
}

// sandboxNamespace returns the path of the container's network namespace
// if it has one of its own: an address on a Docker network of its own (so
// not host networking, whose namespace is the node's, nor another
// container's namespace, whose loopback sshd would be that container's) and
// a sandbox key. The relay dials the sshd on that namespace's loopback,
// which skips the bridge, the veth pair and connection tracking. The netns
// dialer also refuses the agent's own namespace, whatever the engine
// reports; this check is what keeps out the node's when the agent runs in
// a namespace of its own.
func sandboxNamespace(c container.InspectResponse) (string, bool) {
	if c.HostConfig != nil && (c.HostConfig.NetworkMode.IsHost() || c.HostConfig.NetworkMode.IsContainer() || c.HostConfig.NetworkMode.IsNone()) {
		return "", false
	}
	if _, ok := networkSSHAddr(c); !ok {
		return "", false
	}
	key := c.NetworkSettings.SandboxKey
	if key == "" || !filepath.IsAbs(key) {
		return "", false
	}
	return key, true
}

func usableAddr(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsLoopback()
}
