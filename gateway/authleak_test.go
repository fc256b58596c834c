package gateway

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

// unsigningSigner has a public key but not its private half: what someone
// holds who copied a user's key from a key server.
type unsigningSigner struct{ pub gossh.PublicKey }

func (s unsigningSigner) PublicKey() gossh.PublicKey { return s.pub }
func (s unsigningSigner) Sign(io.Reader, []byte) (*gossh.Signature, error) {
	return nil, errors.New("no private key")
}

// TestKeyQueryRevealsNoVPS: offering only the public key of a user whose key
// opens several VPSs must not make the gateway list them (the unsigned
// query of publickey auth); the key's holder still reads them (the
// "ambiguous" case of TestRouting).
func TestKeyQueryRevealsNoVPS(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "secret-project-a", 0, key)
	g.addVPS(t, "secret-project-b", 0, key)

	var mu sync.Mutex
	var banners []string
	cfg := &gossh.ClientConfig{
		User:            loginUser(t),
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(unsigningSigner{key.signer.PublicKey()})},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		BannerCallback: func(msg string) error {
			mu.Lock()
			defer mu.Unlock()
			banners = append(banners, msg)
			return nil
		},
	}
	c, err := gossh.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", g.port()), cfg)
	if err == nil {
		c.Close()
		t.Fatal("logged in without the private key")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, b := range banners {
		if strings.Contains(b, "secret-project") {
			t.Fatalf("a public key alone made the gateway list its VPSs: %q", b)
		}
	}
}
