package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// serverConfig is gliderlabs' ServerConfigCallback: the per-connection
// x/crypto config. gliderlabs adds the host keys and wraps
// PublicKeyHandler into PublicKeyCallback afterwards.
func (s *Server) serverConfig(ctx gliderssh.Context) *gossh.ServerConfig {
	c := connFrom(ctx)
	cfg := &gossh.ServerConfig{MaxAuthTries: s.cfg.MaxAuthTries}
	if c == nil {
		cfg.Ciphers = s.ciphersFor("")
		return cfg
	}
	cfg.Ciphers = c.ciphers
	cfg.PreAuthConnCallback = func(pc gossh.ServerPreAuthConn) { c.preAuth = pc }
	cfg.VerifiedPublicKeyCallback = func(md gossh.ConnMetadata, key gossh.PublicKey, perms *gossh.Permissions, _ string) (*gossh.Permissions, error) {
		return c.onVerified(md.User(), key, perms)
	}
	return cfg
}

// mayAuthenticate is gliderlabs' PublicKeyHandler. It may be called for keys
// the client does not hold, so it only answers yes or no and binds nothing.
func (s *Server) mayAuthenticate(ctx gliderssh.Context, key gliderssh.PublicKey) bool {
	c := connFrom(ctx)
	if c == nil {
		return false
	}
	_, err := s.resolve(c.ctx, c.vpsPort, ctx.User(), key)
	if errors.Is(err, errSeveralVPSs) {
		// The refusal names the key's VPSs: say yes here, so that only a
		// client that proves it holds the key (onVerified) reads it. A
		// public key alone (anyone's, from a key server) must not list
		// what it opens.
		return true
	}
	if err != nil {
		c.refuse(err)
		return false
	}
	return true
}

// errKeyOpensNone is wrapped in the refusal of a key route whose key opens
// no running VPS.
var errKeyOpensNone = errors.New("key opens no running VPS")

// errSeveralVPSs is wrapped in the refusal of a key route whose key opens
// more than one running VPS.
var errSeveralVPSs = errors.New("key opens several running VPSs")

// onVerified runs after the client proved it holds key: the only place the
// route is bound to the connection.
func (c *conn) onVerified(user string, key gossh.PublicKey, perms *gossh.Permissions) (*gossh.Permissions, error) {
	r, err := c.srv.resolve(c.ctx, c.vpsPort, user, key)
	if err != nil {
		c.refuse(err)
		return nil, errors.New("permission denied")
	}
	if perms == nil {
		perms = &gossh.Permissions{}
	}
	perms.Extensions = map[string]string{
		"kohakuriver-vps":   r.vps.TaskID,
		"kohakuriver-login": r.login,
		"kohakuriver-route": string(r.kind),
	}
	if c.authDone.Load() {
		// Invariant: x/crypto finishes auth once per connection.
		panic("gateway: second successful authentication on one connection")
	}
	c.route = r
	c.authDone.Store(true)
	c.grace.Stop()
	c.log = c.log.With("vps", r.vps.TaskID, "login_user", r.login)
	c.log.Info("authenticated", "remote_addr", c.remote.String(), "route", string(r.kind),
		"key_fingerprint", r.fingerprint, "owner", r.vps.Owner)
	go c.startHop()
	return perms, nil
}

// refuse logs a refused key and shows the user why, once per connection,
// as an auth banner (before auth there is no other channel to speak on).
func (c *conn) refuse(err error) {
	c.log.Info("key refused", "remote_addr", c.remote.String(), "err", err)
	c.srv.metrics.authFailed("key")
	var ue *userError
	if !errors.As(err, &ue) || c.preAuth == nil {
		return
	}
	c.mu.Lock()
	sent := c.bannerSent
	c.bannerSent = true
	c.mu.Unlock()
	if !sent {
		_ = c.preAuth.SendAuthBanner(userMessage(err, c.id) + "\r\n")
	}
}

// resolve decides where a login goes: which VPS and which login user, or
// why not. vpsPort is the VPS port the connection came in on (0 = main).
func (s *Server) resolve(ctx context.Context, vpsPort int, user string, key gossh.PublicKey) (route, error) {
	if _, isCert := key.(*gossh.Certificate); isCert {
		return route{}, userErrorf(nil, "certificates are not accepted; offer the plain key added to your VPS")
	}
	fp := gossh.FingerprintSHA256(key)
	if vpsPort != 0 {
		return s.resolvePort(ctx, vpsPort, user, fp)
	}
	t, err := ParseTarget(user)
	if err != nil {
		return route{}, userErrorf(nil, "%s", err.Error())
	}
	if t.Ref != "" {
		v, err := s.cfg.Directory.VPS(ctx, t.Ref)
		switch {
		case err == nil:
			login := t.Login
			if login == "" {
				login = v.LoginUser
			}
			r, err := s.admit(routeUsername, v, login, fp)
			if err == nil {
				return r, nil
			}
			if t.Explicit || !t.MaybeLogin {
				if errors.Is(err, errKeyNotAdmitted) {
					// In the words the client used: a stranger who typed
					// a task id must not learn the VPS's name.
					return route{}, s.denyUnknown(t.Ref)
				}
				return route{}, err
			}
			if errors.Is(err, errNoKeys) {
				// The VPS's own authentication comes next.
				return route{}, err
			}
			// A bare word that names a VPS this key does not open: refused,
			// so that the client offers its next key (`ssh web@host` from
			// an agent whose first key opens another VPS). To a key that
			// opens no running VPS it is worded as for a word that names no
			// VPS, so a stranger cannot tell which names exist. (Names that
			// everyone uses as key-route logins are reserved:
			// store.ValidateNewName.)
			if _, kerr := s.resolveKey(ctx, user, fp); errors.Is(kerr, errKeyOpensNone) {
				return route{}, kerr
			}
			return route{}, s.denyUnknown(t.Ref)
		case !errors.Is(err, store.ErrNotFound):
			return route{}, fmt.Errorf("look up vps %q: %w", t.Ref, err)
		case t.Explicit || !t.MaybeLogin:
			return route{}, s.denyUnknown(t.Ref)
		}
	}
	// A bare word that names no VPS is the login user of a key route.
	return s.resolveKey(ctx, user, fp)
}

// errKeyNotAdmitted is admit's refusal of a key that v does not list. Each
// route words it for the user itself (denyUnknown, resolvePort), naming
// only what the client already named.
var errKeyNotAdmitted = errors.New("key not among the vps's keys")

// errNoKeys is admit's answer for a VPS that takes no keys: the client
// goes on to keyboard-interactive, which relays the VPS's own
// authentication (interactive.go).
var errNoKeys = errors.New("vps has no keys")

// admit checks that the key opens v.
func (s *Server) admit(kind routeKind, v store.VPS, login, fp string) (route, error) {
	if login == "" {
		login = store.DefaultLoginUser
	}
	if v.KeyMode == store.KeyModeNone && len(v.Keys) == 0 {
		// No banner: the client goes on to keyboard-interactive, which
		// relays the VPS's own authentication (interactive.go). Keys added
		// later are honoured like any others.
		return route{}, errNoKeys
	}
	if !v.HasKey(fp) {
		return route{}, errKeyNotAdmitted
	}
	return route{kind: kind, vps: v, login: login, fingerprint: fp}, nil
}

// denyUnknown refuses a login by name or task id with the same words
// whether the VPS exists or not: a refusal must not tell strangers which
// VPSs exist.
func (s *Server) denyUnknown(ref string) error {
	return userErrorf(nil, "this key does not open VPS %q, or there is no such VPS; check `kohakuriver vps status %s` and the key you offer", printable(ref), printable(ref))
}

// resolvePort routes a connection on a VPS's own port: the user name is the
// login user.
func (s *Server) resolvePort(ctx context.Context, port int, user, fp string) (route, error) {
	v, err := s.cfg.Directory.VPSByPort(ctx, port)
	if errors.Is(err, store.ErrNotFound) {
		return route{}, userErrorf(nil, "no VPS uses port %d any more; list yours with `kohakuriver vps list`", port)
	}
	if err != nil {
		return route{}, fmt.Errorf("look up port %d: %w", port, err)
	}
	if err := store.ValidateLoginUser(user); err != nil {
		return route{}, userErrorf(nil, "%q is not a valid login user; on a VPS port the user name is the user inside the VPS (ssh -p %d root@HOST)", printable(user), port)
	}
	r, err := s.admit(routePort, v, user, fp)
	if errors.Is(err, errKeyNotAdmitted) {
		// The port is all the client named: anyone can find the VPS ports
		// by connecting, but not the names of the VPSs behind them.
		return route{}, userErrorf(nil, "this key does not open %s; check the port with `kohakuriver vps list` and the key you offer", vpsOnPort(port))
	}
	return r, err
}

// vpsOnPort names a VPS by its port only, for clients that named nothing
// else.
func vpsOnPort(port int) string { return fmt.Sprintf("the VPS on port %d", port) }

// resolveKey routes by key alone: the key must open exactly one running VPS.
func (s *Server) resolveKey(ctx context.Context, login, fp string) (route, error) {
	vpss, err := s.cfg.Directory.VPSByKey(ctx, fp)
	if err != nil {
		return route{}, fmt.Errorf("look up key: %w", err)
	}
	var running []store.VPS
	for _, v := range vpss {
		if v.Status == store.StatusRunning {
			running = append(running, v)
		}
	}
	switch len(running) {
	case 1:
		return route{kind: routeKey, vps: running[0], login: login, fingerprint: fp}, nil
	case 0:
		return route{}, userErrorf(errKeyOpensNone, "this key opens no running VPS, and %q names none it opens; connect with %s", printable(login), s.hint())
	default:
		refs := make([]string, 0, len(running))
		for _, v := range running {
			refs = append(refs, v.Ref())
		}
		if len(refs) > 5 {
			refs = append(refs[:5], "...")
		}
		return route{}, userErrorf(errSeveralVPSs, "this key opens several VPSs (%s); name one: %s", strings.Join(refs, ", "), s.hint())
	}
}
