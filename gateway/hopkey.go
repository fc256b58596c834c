package gateway

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// HopKeys derives the plain key the hop falls back to when a VPS's sshd
// cannot verify OpenSSH certificates (Dropbear implements neither
// certificates nor cert-authority lines). Each VPS gets its own key, written
// into its authorized_keys next to the cert-authority line.
//
// The keys are derived, not stored: HMAC-SHA256 of the task ID under the
// user CA's seed is an Ed25519 seed. So there is no new state to back up or
// migrate, a VPS's key is the same after a host restart, and a key read out
// of one VPS (only its public half is ever there) admits to no other VPS.
// The certificate stays the first choice because it carries an expiry, the
// login principal and a key ID for the VPS's auth log.
type HopKeys struct {
	secret []byte
}

// hopKeyLabel separates this use of the CA seed from any other.
const hopKeyLabel = "kohakuriver hop key v1\x00"

// NewHopKeys derives from the identity's user CA (PEM, Ed25519).
func NewHopKeys(userCAPEM []byte) (*HopKeys, error) {
	raw, err := gossh.ParseRawPrivateKey(userCAPEM)
	if err != nil {
		return nil, fmt.Errorf("hop keys: user CA: %w", err)
	}
	var seed []byte
	switch k := raw.(type) {
	case ed25519.PrivateKey:
		seed = k.Seed()
	case *ed25519.PrivateKey:
		seed = k.Seed()
	default:
		return nil, fmt.Errorf("hop keys: user CA is %T; want Ed25519", raw)
	}
	return &HopKeys{secret: seed}, nil
}

// Signer returns the hop key of the VPS with this task ID.
func (h *HopKeys) Signer(taskID string) gossh.Signer {
	mac := hmac.New(sha256.New, h.secret)
	mac.Write([]byte(hopKeyLabel + taskID))
	s, err := gossh.NewSignerFromKey(ed25519.NewKeyFromSeed(mac.Sum(nil)))
	if err != nil {
		// x/crypto accepts every ed25519.PrivateKey; this cannot happen.
		panic("hop keys: " + err.Error())
	}
	return s
}

// AuthorizedKeyLine is the authorized_keys line for the VPS's hop key. It
// carries no options: the hop relays whatever the user's own key may do
// (pty, forwarding, agent), and the gateway enforces its own limits.
func (h *HopKeys) AuthorizedKeyLine(taskID string) string {
	pub := h.Signer(taskID).PublicKey()
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub))) + " kohakuriver-gateway-hop"
}
