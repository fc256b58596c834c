package gateway

// The identification strings of the gateway's two SSH ends.
//
// Both start with "OpenSSH" on purpose. OpenSSH keys some protocol
// extensions on the peer's version string (compat.c: "OpenSSH*" sets
// SSH_NEW_OPENSSH), and the one a transparent relay cannot do without is
// eow@openssh.com: ssh sends it when its stdout goes away (`ssh vps yes |
// head -1`), sshd when the command closes its stdin. Each sends it only to a
// peer that says OpenSSH; without it, the VPS command in that example runs
// (and its output crosses both hops) until the user kills ssh. The same flag
// makes ssh send no-more-sessions@openssh.com, which the gateway enforces
// itself (sessiongate.go).
//
// Nothing after "OpenSSH_" looks like a release number, so no client's or
// scanner's version-specific workarounds (OpenSSH's own, PuTTY's bug
// detection) apply.
const (
	// serverVersion is what clients see (gliderlabs prefixes "SSH-2.0-").
	serverVersion = "OpenSSH_kohakuriver"
	// hopClientVersion is what the VPS's sshd sees on the hop.
	hopClientVersion = "SSH-2.0-OpenSSH_kohakuriver-gateway"
)
