// Package relay gives the gateway a raw byte stream to one VPS's sshd,
// through the node agent that runs the VPS, and to nothing else.
//
// # Basics
//
// The gateway calls Dialer.Dial(ctx, agentAddr, taskID). It opens a TCP
// connection to the agent and sends
//
//	GET /v1/relay/<19-digit task id> HTTP/1.1
//	Connection: Upgrade
//	Upgrade: kohakuriver-relay/1
//	Authorization: KR-HMAC-SHA256 ts=...,nonce=...,sig=...
//
// signed with the cluster token (package agent/clusterauth). The agent's
// Handler verifies it, asks its Targets where the sshd is (with
// NamespaceTargets, 127.0.0.1:22 inside the container's own network
// namespace, dialled through package agent/netns; else, or when that
// fails, the container's address on its Docker network), dials it,
// answers "101 Switching Protocols"
// and from then on copies bytes both ways. Refusals are small JSON bodies
// {"error": "...", "relay_id": "..."} with a status Dial maps to a sentinel
// error (see errors.go), so the gateway can tell users in one line why
// their VPS is not reachable.
//
// The agent owns a Handler: it mounts it at Pattern (or serves it alone)
// from an http.Server with header limits such as NewHTTPServer returns, and
// calls Handler.Close when it stops. Close ends every live relay, which an
// http.Server's Shutdown does not do for hijacked connections.
//
// # Why HMAC, and why no TLS
//
// The inner traffic is SSH: encrypted and integrity-protected end to end
// between the gateway and the VPS's sshd, whose host key the gateway pins.
// Someone on the path between gateway and agent can read only ciphertext
// and can at worst break the connection, as on any TCP path. So the relay
// adds no encryption. What it must guarantee is that only the gateway can
// open a relay, without the token ever crossing the network in clear: the
// request carries an HMAC of itself keyed with the token, not the token.
//
// # The replay window
//
// A signed request is accepted once, and only within ±60s of the agent's
// clock (clusterauth.DefaultWindow): a captured handshake cannot be replayed
// to the same agent. Host and node clocks must agree within that window.
// See clusterauth's Caveats for replays across agents (harmless here: a
// task id names one agent's VPS).
//
// # Throughput
//
// Between two TCP sockets the copy is io.Copy, which on Linux becomes
// splice(2): the bulk scp/rsync path never copies bytes through user space.
// Other conn types use pooled 128 KiB buffers. Half-closes are forwarded
// (CloseWrite), so SSH's EOF semantics survive the hop; see pipe.
//
// # Handoff: no relay at all on the host's own machine
//
// When the agent runs on the host's machine (a single-node cluster, or the
// host's machine is also a node), copying every byte through the agent costs
// that machine about a core-second per GiB beside the gateway's own work.
// There the agent also listens on a unix socket (ListenLocal) and the
// gateway calls DialLocal: the same signed request with Upgrade
// HandoffProtocol, which the agent checks and resolves exactly like a relay
// request, dials the sshd, and answers "101" with that TCP socket attached
// (SCM_RIGHTS). The gateway then speaks SSH on the socket itself and the
// agent forgets it. The socket is found through the agent's report: its path
// and the kernel's boot id (BootID), tried only when the host's boot id is
// the same. The host falls back to Dial when no agent of its user (or root)
// answers there, or another agent than the VPS's does (unknown VPS, another
// cluster token); the VPS's own agent's refusals stand, and so does a
// handoff that timed out (the agent is there but stuck).
//
// What changes for a handed-off connection: Handler.Close and the relay
// limit no longer reach it (stopping the VPS still ends it, as it ends a
// relay), and the agent logs "relay handed off" instead of "relay closed".
//
// # Caveats
//
//   - Nothing is dialled before the request is authenticated and the path
//     is exactly /v1/relay/ followed by a task id; the relay dials only the
//     addresses Targets returns, and inside a namespace only the one it
//     names (never the agent's own: package netns refuses it).
//   - Relays have no idle timeout: an SSH session may sit idle for hours.
//     SSH keepalives (and TCP keepalives, on by default in net) end dead ones.
//   - Requests being resolved or dialled count against the relay limit.
//   - splice needs both ends to be *net.TCPConn: serve the Handler from a
//     plain TCP listener. A listener that wraps its conns (connection
//     limiters, PROXY protocol) silently falls back to buffered copies.
package relay
