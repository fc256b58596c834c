package store

import (
	"bytes"
	"fmt"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// maxKeyLine bounds one authorized_keys line; real keys (RSA 16384 included)
// are far shorter.
const maxKeyLine = 16 << 10

// ParseAuthorizedKey parses one public key in authorized_keys format and
// returns it normalised: "TYPE BASE64 [COMMENT]" with options stripped (the
// gateway and agent decide options, never the user), a single-line comment,
// and its SHA256 fingerprint. Certificates and unknown types are refused.
// Errors wrap ErrInvalid and say what to fix.
func ParseAuthorizedKey(line string) (AuthorizedKey, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return AuthorizedKey{}, fmt.Errorf("%w: empty public key", ErrInvalid)
	}
	if len(line) > maxKeyLine {
		return AuthorizedKey{}, fmt.Errorf("%w: public key is longer than %d bytes", ErrInvalid, maxKeyLine)
	}
	if strings.ContainsAny(line, "\r\n") {
		return AuthorizedKey{}, fmt.Errorf("%w: give one public key per line", ErrInvalid)
	}
	pub, comment, _, rest, err := gossh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return AuthorizedKey{}, fmt.Errorf("%w: not an OpenSSH public key (expected \"ssh-ed25519 AAAA... comment\", the contents of a .pub file)", ErrInvalid)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return AuthorizedKey{}, fmt.Errorf("%w: give one public key per line", ErrInvalid)
	}
	if _, isCert := pub.(*gossh.Certificate); isCert {
		return AuthorizedKey{}, fmt.Errorf("%w: certificates are not accepted; give the plain public key", ErrInvalid)
	}
	if !allowedKeyType(pub.Type()) {
		return AuthorizedKey{}, fmt.Errorf("%w: key type %q is not supported", ErrInvalid, pub.Type())
	}
	norm := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub)))
	if c := sanitizeComment(comment); c != "" {
		norm += " " + c
	}
	return AuthorizedKey{Line: norm, Fingerprint: gossh.FingerprintSHA256(pub)}, nil
}

// ParseAuthorizedKeys parses several keys, one per line, skipping blank lines
// and # comments, and drops duplicates (same fingerprint).
func ParseAuthorizedKeys(text string) ([]AuthorizedKey, error) {
	var keys []AuthorizedKey
	seen := map[string]bool{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := ParseAuthorizedKey(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if seen[k.Fingerprint] {
			continue
		}
		seen[k.Fingerprint] = true
		keys = append(keys, k)
	}
	return keys, nil
}

// PublicKey returns the parsed key of a normalised line.
func (k AuthorizedKey) PublicKey() (gossh.PublicKey, error) {
	pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(k.Line))
	return pub, err
}

func allowedKeyType(t string) bool {
	switch t {
	case gossh.KeyAlgoED25519, gossh.KeyAlgoRSA,
		gossh.KeyAlgoECDSA256, gossh.KeyAlgoECDSA384, gossh.KeyAlgoECDSA521,
		gossh.KeyAlgoSKED25519, gossh.KeyAlgoSKECDSA256:
		return true
	}
	return false
}

// sanitizeComment keeps printable ASCII so that a comment can never inject a
// second line or option into a generated authorized_keys file.
func sanitizeComment(c string) string {
	var b strings.Builder
	for _, r := range c {
		if r >= 0x20 && r < 0x7f {
			b.WriteRune(r)
		}
	}
	s := strings.TrimSpace(b.String())
	if len(s) > 256 {
		s = s[:256]
	}
	return s
}
