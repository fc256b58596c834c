// Package agent is the node agent (`kohakuriver agent`): it registers with
// the host, heartbeats with the state of its VPS containers, serves the
// host's control API (package control) and the gateway's relay to VPS sshds
// (package relay), all on one listener authenticated with the cluster
// token. With Config.RelaySocket it also serves handoffs on a unix socket:
// a gateway on the same machine gets the socket to a VPS's sshd itself
// instead of a relay (see package relay, "Handoff").
//
// # Caveats
//
//   - The relay reaches only the sshd of a VPS this agent runs (the address
//     its runtime published on 127.0.0.1), never an address from the
//     request.
//   - Relays are hijacked connections: they survive an http.Server shutdown
//     and are ended by Close. Handed-off connections are the gateway's and
//     survive Close too.
//   - After an agent restart the containers keep running; the first
//     registration reports them again and the host re-adopts them.
package agent
