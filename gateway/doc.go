// Package gateway is the SSH gateway of the host: it terminates the user's
// SSH connection, decides which VPS it may reach, and relays everything to
// that VPS's own sshd over a second SSH connection (the hop) carried through
// the node's agent.
//
// # Basics
//
// One gliderlabs/ssh server accepts on the main port (username and key
// routing) and on one port per VPS (port routing). gliderlabs provides the
// accept loops and connection bookkeeping; session semantics are not its
// business here: every channel type and every global request goes to one
// generic relay (relay.go), so pty, exec, sftp, forwarding, agent and X11
// channels all behave as they would on a direct login.
//
// A connection goes through these phases, in order (see type conn):
//
//  1. accept: ConnCallback creates the conn state and arms the login grace
//     timer.
//  2. auth: PublicKeyHandler answers yes/no for each key the client offers
//     (it may be a key the client does not hold). Only
//     VerifiedPublicKeyCallback, which runs after the signature is checked,
//     binds the route to the conn and publishes authDone.
//  3. hop: right after auth the upstream SSH connection is dialed in the
//     background: through the agent relay, host key checked against the
//     pinned keys, authenticated with a short-lived user certificate signed
//     by the gateway's user CA.
//  4. relay: channels and global requests flow both ways until either side
//     ends; then the other side is closed after in-flight channels drained.
//
// # Caveats
//
//   - The gateway never holds a user's private key; agent forwarding is
//     relayed as channels, never terminated here.
//   - Forwarding targets (-L, -D, -W) are resolved by the VPS's sshd,
//     never by the gateway: the gateway opens no sockets on a user's behalf.
//   - hostkeys-00@openssh.com from the VPS is dropped and
//     hostkeys-prove-00@openssh.com from the client refused: they concern
//     the VPS's host keys, which clients must not learn or pin.
package gateway
