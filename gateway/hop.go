package gateway

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// upstream is the hop: the gateway's SSH client connection to the VPS sshd.
type upstream struct {
	client gossh.Conn
	chans  <-chan gossh.NewChannel
	reqs   <-chan *gossh.Request
	// lost is closed when reading the hop's socket failed.
	lost <-chan struct{}
}

// startHop dials the VPS and then relays until either side ends. It runs
// once per authenticated connection and always closes hopDone.
func (c *conn) startHop() {
	start := time.Now()
	up, err := c.dialHop()
	c.srv.metrics.hop(start, err)
	c.finishHop(up, err)
}

// finishHop publishes the hop's outcome and, on success, starts relaying
// what the VPS initiates.
func (c *conn) finishHop(up *upstream, err error) {
	c.up, c.hopErr = up, err
	if up != nil {
		c.hopLost = up.lost
	}
	close(c.hopDone)
	if err != nil {
		c.log.Warn("hop failed", "err", err)
		return
	}
	go c.relayUpstream(up)
}

// relayUpstream relays what the VPS starts (see relayFromVPS) until the
// hop ends; then it lets the open channels drain to the client and closes
// the downstream connection.
func (c *conn) relayUpstream(up *upstream) {
	relayFromVPS(up.chans, up.reqs, c.openFromVPS, c.forwardFromVPS)
	err := up.client.Wait()
	c.waitPipes(5 * time.Second)
	c.close(fmt.Errorf("vps connection ended: %w", err))
}

// relayFromVPS takes what the VPS starts, channels and global requests,
// until chans is closed (x/crypto closes it, and reqs, when the hop's
// transport ends). Each channel is opened on a goroutine of its own; the
// requests are forwarded one at a time, in order, on a serialQueue, so that
// a client slow to answer a keepalive (a suspended ssh) holds up neither
// channel opens nor the end of the hop, and no goroutine idles for
// requests that sshd sends rarely if ever (its host keys once, keepalives if
// configured). While maxQueuedRequests wait, no more are taken, and
// x/crypto's own queue pushes back on the VPS.
func relayFromVPS(chans <-chan gossh.NewChannel, reqs <-chan *gossh.Request, open func(gossh.NewChannel), forward func(*gossh.Request)) {
	wake := make(chan struct{}, 1)
	out := newSerialQueue(wake)
	for chans != nil {
		select {
		case nc, ok := <-chans:
			if !ok {
				// The hop ended: requests not taken yet can no longer be
				// answered.
				chans = nil
				continue
			}
			go open(nc)
		case req, ok := <-takeIfRoom(out, reqs):
			if !ok {
				reqs = nil
				continue
			}
			out.push(func() { forward(req) })
		case <-wake:
		}
	}
}

// lossConn wraps the hop's byte stream and closes lost when a read fails:
// x/crypto reads the socket, sees the error, and only then ends every
// channel with EOF, so a channel that ends can tell a VPS that went away
// from one that finished.
type lossConn struct {
	net.Conn
	once sync.Once
	lost chan struct{}
}

func (lc *lossConn) Read(p []byte) (int, error) {
	n, err := lc.Conn.Read(p)
	if err != nil {
		lc.once.Do(func() { close(lc.lost) })
	}
	return n, err
}

// waitHop blocks until the hop is up or failed, or the conn ends.
func (c *conn) waitHop() (*upstream, error) {
	select {
	case <-c.hopDone:
		return c.up, c.hopErr
	case <-c.ctx.Done():
		return nil, context.Cause(c.ctx)
	}
}

// addPipe counts a new channel pair, unless the hop has ended and
// waitPipes has begun.
func (c *conn) addPipe() bool {
	c.pipesMu.Lock()
	defer c.pipesMu.Unlock()
	if c.pipesClosed {
		return false
	}
	c.pipes.Add(1)
	return true
}

// waitPipes waits up to max for the open channel pairs to end, after
// refusing new ones.
func (c *conn) waitPipes(max time.Duration) {
	c.pipesMu.Lock()
	c.pipesClosed = true
	c.pipesMu.Unlock()
	done := make(chan struct{})
	go func() { c.pipes.Wait(); close(done) }()
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// dialHop checks that the VPS can be reached and opens the SSH connection
// to its sshd, authenticated with a hop certificate.
func (c *conn) dialHop() (*upstream, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.srv.cfg.HopTimeout)
	defer cancel()
	v, pinned, nc, err := c.srv.dialVPS(ctx, c.route.vps)
	if err != nil {
		return nil, err
	}
	signers, err := c.hopSigners()
	if err != nil {
		nc.Close()
		return nil, err
	}
	// x/crypto keeps the client config, Auth included, for re-keying as
	// long as the connection lives; the callback lets the certificate go
	// once the login is done (auth runs inside handshake, on this goroutine).
	auth := gossh.PublicKeysCallback(func() ([]gossh.Signer, error) { return signers, nil })
	up, err := c.srv.handshake(ctx, nc, v, pinned, c.route.login, auth)
	signers = nil
	return up, err
}

// hopSigners are the hop's credentials in the order offered: the
// short-lived certificate, then (if configured) the VPS's plain hop key for
// sshds without certificate support. x/crypto asks the sshd about each key
// before signing, so an OpenSSH sshd never sees the plain key used.
func (c *conn) hopSigners() ([]gossh.Signer, error) {
	cert, err := c.hopCertificate()
	if err != nil {
		return nil, fmt.Errorf("sign hop certificate: %w", err)
	}
	if c.srv.cfg.HopKeys == nil {
		return []gossh.Signer{cert}, nil
	}
	return []gossh.Signer{cert, c.srv.cfg.HopKeys.Signer(c.route.vps.TaskID)}, nil
}

// dialVPS re-reads the VPS, checks that it can be reached and opens the
// byte stream to its sshd. Errors are userErrors.
func (s *Server) dialVPS(ctx context.Context, v store.VPS) (store.VPS, []gossh.PublicKey, net.Conn, error) {
	ref := v.Ref()
	// Re-read: status may have changed since auth.
	if fresh, err := s.cfg.Directory.VPS(ctx, v.TaskID); err == nil {
		v = fresh
	} else if errors.Is(err, store.ErrNotFound) {
		return v, nil, nil, userErrorf(err, "VPS %s was deleted", ref)
	}
	switch v.Status {
	case store.StatusRunning:
	case store.StatusStopped:
		return v, nil, nil, userErrorf(nil, "VPS %s is stopped; start it with `kohakuriver vps start %s`", ref, ref)
	case store.StatusPending:
		return v, nil, nil, userErrorf(nil, "VPS %s is still starting; try again in a few seconds (`kohakuriver vps status %s`)", ref, ref)
	case store.StatusLost:
		return v, nil, nil, userErrorf(nil, "the node of VPS %s (%s) is offline; check `kohakuriver node status %s`", ref, v.Node, v.Node)
	default:
		return v, nil, nil, userErrorf(nil, "VPS %s is %s: %s; see `kohakuriver vps status %s`", ref, v.Status, printable(v.Message), ref)
	}
	pinned, err := parseHostKeys(v.HostKeys)
	if err != nil || len(pinned) == 0 {
		return v, nil, nil, userErrorf(err, "VPS %s has no recorded host key yet; try again shortly (`kohakuriver vps status %s`)", ref, ref)
	}
	node, err := s.cfg.Directory.Node(ctx, v.Node)
	if err != nil {
		return v, nil, nil, userErrorf(err, "the node of VPS %s (%s) is unknown; ask your administrator", ref, v.Node)
	}
	if node.Status != store.NodeOnline {
		return v, nil, nil, userErrorf(nil, "the node of VPS %s (%s) is offline; check `kohakuriver node status %s`", ref, v.Node, v.Node)
	}
	nc, err := s.cfg.Hop.DialVPS(ctx, v, node)
	if err != nil {
		switch {
		case errors.Is(err, ErrVPSNotRunning):
			err = userErrorf(err, "VPS %s is not running on its node; check `kohakuriver vps status %s`", ref, ref)
		case errors.Is(err, ErrSSHDUnreachable):
			err = userErrorf(err, "the sshd of VPS %s does not answer; check `kohakuriver vps status %s`", ref, ref)
		case errors.Is(err, ErrNodeUnreachable):
			err = userErrorf(err, "the node of VPS %s (%s) cannot be reached; check `kohakuriver node status %s`", ref, v.Node, v.Node)
		case ctx.Err() != nil:
			err = userErrorf(err, "timed out reaching VPS %s; check `kohakuriver vps status %s`", ref, ref)
		default:
			err = userErrorf(err, "cannot reach VPS %s; check `kohakuriver vps status %s`", ref, ref)
		}
		return v, nil, nil, err
	}
	return v, pinned, nc, nil
}

// handshake runs the SSH client handshake on nc: the sshd must show a
// pinned host key, and the gateway logs in as login with auth.
func (s *Server) handshake(ctx context.Context, nc net.Conn, v store.VPS, pinned []gossh.PublicKey, login string, auth ...gossh.AuthMethod) (*upstream, error) {
	ref := v.Ref()
	lost := &lossConn{Conn: newReadAheadConn(newCoalesceConn(nc)), lost: make(chan struct{})}
	// NewClientConn has no timeout of its own: bound the handshake with a
	// deadline on the socket, cleared once the connection is up.
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	cc, chans, reqs, err := gossh.NewClientConn(lost, "vps-"+v.TaskID, &gossh.ClientConfig{
		User:              login,
		Auth:              auth,
		HostKeyCallback:   pinnedHostKey(pinned),
		HostKeyAlgorithms: hostKeyAlgorithms(pinned),
		ClientVersion:     hopClientVersion,
		Config:            gossh.Config{Ciphers: hopCiphers},
	})
	stop()
	if err != nil {
		nc.Close()
		switch {
		case errors.Is(err, ErrHostKeyMismatch):
			return nil, userErrorf(err, "the host key of VPS %s does not match the one recorded when it was created; refusing to connect. Ask your administrator", ref)
		case ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded):
			// The socket's deadline is the context's: either may fire first.
			return nil, userErrorf(err, "timed out logging in to VPS %s", ref)
		case strings.Contains(err.Error(), "unable to authenticate"):
			// x/crypto has no error type for a client-side auth failure.
			return nil, userErrorf(err, "the sshd of VPS %s refused the login as %q; check that the user exists in the VPS", ref, login)
		default:
			return nil, userErrorf(err, "the sshd of VPS %s ended the connection during the login (it may be restarting or overloaded); try again, or check `kohakuriver vps status %s`", ref, ref)
		}
	}
	_ = nc.SetDeadline(time.Time{})
	return &upstream{client: cc, chans: chans, reqs: reqs, lost: lost.lost}, nil
}

// hopCertificate makes a fresh key and a short-lived user certificate for it,
// signed by the gateway's user CA. The VPS trusts the CA through a
// cert-authority line in the login user's authorized_keys.
func (c *conn) hopCertificate() (gossh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	var serial [8]byte
	_, _ = rand.Read(serial[:])
	now := time.Now()
	cert := &gossh.Certificate{
		Key:             signer.PublicKey(),
		Serial:          binary.BigEndian.Uint64(serial[:]),
		CertType:        gossh.UserCert,
		KeyId:           fmt.Sprintf("kohakuriver conn=%s vps=%s owner=%s key=%s", c.id, c.route.vps.TaskID, c.route.vps.Owner, c.route.fingerprint),
		ValidPrincipals: []string{c.route.login},
		// Slack for clock skew between host and node.
		ValidAfter:  uint64(now.Add(-2 * time.Minute).Unix()),
		ValidBefore: uint64(now.Add(c.srv.cfg.CertTTL).Unix()),
		Permissions: gossh.Permissions{Extensions: map[string]string{
			"permit-pty":              "",
			"permit-port-forwarding":  "",
			"permit-agent-forwarding": "",
			"permit-X11-forwarding":   "",
			"permit-user-rc":          "",
		}},
	}
	if err := cert.SignCert(rand.Reader, c.srv.cfg.UserCA); err != nil {
		return nil, err
	}
	return gossh.NewCertSigner(cert, signer)
}

func parseHostKeys(lines []string) ([]gossh.PublicKey, error) {
	var keys []gossh.PublicKey
	for _, l := range lines {
		k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(l))
		if err != nil {
			return nil, fmt.Errorf("pinned host key: %w", err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func pinnedHostKey(pinned []gossh.PublicKey) gossh.HostKeyCallback {
	return func(_ string, _ net.Addr, key gossh.PublicKey) error {
		got := key.Marshal()
		for _, p := range pinned {
			if bytes.Equal(p.Marshal(), got) {
				return nil
			}
		}
		return fmt.Errorf("%w: got %s %s", ErrHostKeyMismatch, key.Type(), gossh.FingerprintSHA256(key))
	}
}

// hostKeyAlgorithms asks the sshd for exactly the pinned key types, so an
// sshd with several host keys shows the pinned one (x/crypto would prefer
// ECDSA or RSA over Ed25519 otherwise and fail the pin).
func hostKeyAlgorithms(pinned []gossh.PublicKey) []string {
	var algos []string
	for _, k := range pinned {
		switch k.Type() {
		case gossh.KeyAlgoRSA:
			algos = append(algos, gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256)
		default:
			algos = append(algos, k.Type())
		}
	}
	return algos
}
