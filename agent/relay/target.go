package relay

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/netns"
)

// Target is where a VPS's sshd answers, as a NamespaceTargets reports it.
type Target struct {
	// Addr is host:port of the sshd as the node reaches it: what
	// Targets.SSHAddr returns.
	Addr string
	// Namespace, if set, is the path of the VPS's own network namespace
	// (for Docker, the container's sandbox key), and NamespaceAddr the
	// sshd's address inside it, normally 127.0.0.1:22. The relay dials
	// there first: loopback inside the container costs both ends less
	// than a connection over the Docker bridge (see package netns). It
	// falls back to Addr when the namespace dial fails.
	Namespace     string
	NamespaceAddr string
}

// NamespaceTargets is implemented by Targets that also know each VPS's
// network namespace. The Handler uses SSHTarget instead of SSHAddr when it
// is there; errors are as SSHAddr's. A Namespace must be the VPS's own: one
// shared with the node (host networking) or with another container must not
// be reported (the dialer refuses the node's own namespace in any case).
type NamespaceTargets interface {
	Targets
	SSHTarget(ctx context.Context, taskID string) (Target, error)
}

// namespaceDialTimeout bounds a dial inside the container. On loopback a
// connect is accepted or refused at once; one that hangs met a firewall in
// the VPS that drops loopback traffic, and the container's address, which
// that firewall may still let in, gets the rest of the dial timeout.
const namespaceDialTimeout = time.Second

// namespaceDial is netns.Dial; tests replace it.
type namespaceDial func(ctx context.Context, d *net.Dialer, nsPath, network, addr string) (net.Conn, error)

// resolveTarget asks h.targets where the VPS's sshd is.
func (h *Handler) resolveTarget(ctx context.Context, taskID string) (Target, error) {
	if nt, ok := h.targets.(NamespaceTargets); ok {
		return nt.SSHTarget(ctx, taskID)
	}
	addr, err := h.targets.SSHAddr(ctx, taskID)
	return Target{Addr: addr}, err
}

// dialSSHD dials t inside its namespace when it has one and this agent may
// enter namespaces, else (or when that fails) at t.Addr. It returns the
// conn and a description of where it went, for the log.
func (h *Handler) dialSSHD(ctx context.Context, log *slog.Logger, t Target) (net.Conn, string, error) {
	if t.Namespace != "" && t.NamespaceAddr != "" && !h.namespaceDenied.Load() {
		where := t.NamespaceAddr + " in " + t.Namespace
		nsCtx, cancel := context.WithTimeout(ctx, h.nsDialTimeout)
		c, err := h.nsDial(nsCtx, &h.dialer, t.Namespace, "tcp", t.NamespaceAddr)
		cancel()
		switch {
		case err == nil:
			return c, where, nil
		case ctx.Err() != nil:
			return nil, where, err
		case errors.Is(err, netns.ErrPermission), errors.Is(err, netns.ErrUnsupported):
			// It will not change while the agent runs: stop trying.
			if h.namespaceDenied.CompareAndSwap(false, true) {
				msg := "relay cannot enter VPS network namespaces; dialling container addresses instead (an agent running as root dials the sshd on the container's loopback, which costs less CPU)"
				if errors.Is(err, netns.ErrUnsupported) {
					msg = "relay dials container addresses: VPS network namespaces are a Linux feature"
				}
				h.logger.Info(msg, "err", err)
			}
		default:
			// An sshd listening on the container's address only, a
			// firewall dropping loopback inside the VPS (the namespace
			// dial's own timeout), a container that just stopped, an
			// engine whose sandbox keys this agent does not see
			// (rootless Docker): the address may still do. Said once at
			// Info, so that an operator learns the faster path is off,
			// then at Debug.
			level := slog.LevelDebug
			if h.namespaceFailed.CompareAndSwap(false, true) {
				level = slog.LevelInfo
			}
			log.Log(ctx, level, "relay namespace dial failed; dialling the container address", "namespace", t.Namespace, "err", err)
		}
	}
	c, err := h.dialer.DialContext(ctx, "tcp", t.Addr)
	return c, t.Addr, err
}
