package gateway

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"fmt"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// GenerateIdentity makes the gateway's key material: host keys (ed25519
// first, then ecdsa-p256 and rsa-3072 for old clients) and the user CA
// (ed25519). It is called once per cluster; the store keeps the result.
func GenerateIdentity() (store.Identity, error) {
	var id store.Identity
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return id, err
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return id, err
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		return id, err
	}
	for _, k := range []crypto.PrivateKey{edKey, ecKey, rsaKey} {
		p, err := marshalPrivateKey(k, "kohakuriver gateway host key")
		if err != nil {
			return id, err
		}
		id.HostKeys = append(id.HostKeys, p)
	}
	_, caKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return id, err
	}
	if id.UserCA, err = marshalPrivateKey(caKey, "kohakuriver gateway user CA"); err != nil {
		return id, err
	}
	id.CreatedAt = time.Now().UTC()
	return id, nil
}

func marshalPrivateKey(k crypto.PrivateKey, comment string) ([]byte, error) {
	block, err := gossh.MarshalPrivateKey(k, comment)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

// Signers parses an identity's host keys and user CA.
func Signers(id store.Identity) (hostKeys []gossh.Signer, userCA gossh.Signer, err error) {
	for i, p := range id.HostKeys {
		s, err := gossh.ParsePrivateKey(p)
		if err != nil {
			return nil, nil, fmt.Errorf("host key %d: %w", i, err)
		}
		hostKeys = append(hostKeys, s)
	}
	if userCA, err = gossh.ParsePrivateKey(id.UserCA); err != nil {
		return nil, nil, fmt.Errorf("user CA: %w", err)
	}
	return hostKeys, userCA, nil
}

// CertAuthorityLine is the authorized_keys line that makes a VPS's sshd
// trust the gateway's hop certificates.
func CertAuthorityLine(userCA gossh.PublicKey) string {
	return "cert-authority " + string(bytesTrimNL(gossh.MarshalAuthorizedKey(userCA))) + " kohakuriver-gateway"
}

// KnownHostsLines returns known_hosts lines for the gateway's host keys
// under the given host patterns (e.g. "[gw.example]:8002").
func KnownHostsLines(hostKeys []gossh.PublicKey, patterns string) []string {
	var out []string
	for _, k := range hostKeys {
		out = append(out, patterns+" "+string(bytesTrimNL(gossh.MarshalAuthorizedKey(k))))
	}
	return out
}

func bytesTrimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
