package gateway

import (
	"context"
	"errors"
	"fmt"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// maxInteractiveTries bounds keyboard-interactive attempts per connection:
// each one opens a connection to the VPS's sshd.
const maxInteractiveTries = 3

// keyboardInteractive is gliderlabs' KeyboardInteractiveHandler. It serves
// VPSs created without a key (--no-ssh-key): the gateway decides nothing
// and stores nothing; it opens the hop right away and relays the sshd's own
// challenges (keyboard-interactive, or a password prompt when the sshd only
// takes passwords) to the client. Success there is success here, and the
// hop is already up.
//
// For any other VPS it answers no without a prompt, so key users are never
// asked for a password.
func (s *Server) keyboardInteractive(ctx gliderssh.Context, challenge gossh.KeyboardInteractiveChallenge) bool {
	c := connFrom(ctx)
	if c == nil || c.authDone.Load() {
		return false
	}
	c.mu.Lock()
	c.interactiveTries++
	tries := c.interactiveTries
	c.mu.Unlock()
	if tries > maxInteractiveTries {
		return false
	}
	r, named, err := s.resolveInteractive(c.ctx, c.vpsPort, ctx.User())
	if err != nil {
		c.log.Debug("keyboard-interactive refused", "err", err)
		return false
	}
	hctx, cancel := context.WithTimeout(c.ctx, s.cfg.HopTimeout+s.cfg.LoginGraceTime)
	defer cancel()
	// Anyone may get this far (no key proved anything): what the gateway
	// says names the VPS only as the client named it, never by its name
	// or node.
	v, pinned, nc, err := s.dialVPS(hctx, r.vps)
	if err != nil {
		state := "unreachable"
		if v.Status != store.StatusRunning {
			state = string(v.Status)
		}
		c.refuse(userErrorf(err, "%s cannot take a login now (%s); its owner can check `kohakuriver vps status`", named, state))
		return false
	}
	// The user answers prompts at human speed: only the dial is bounded by
	// HopTimeout; the login grace timer bounds the rest.
	relay := func(name, instruction string, questions []string, echos []bool) ([]string, error) {
		return challenge(printable(name), printable(instruction), questions, echos)
	}
	password := func() (string, error) {
		answers, err := challenge("", "", []string{fmt.Sprintf("Password for %s in %s: ", r.login, named)}, []bool{false})
		if err != nil || len(answers) != 1 {
			return "", errors.New("no password given")
		}
		return answers[0], nil
	}
	up, err := s.handshake(hctx, nc, v, pinned, r.login,
		gossh.KeyboardInteractive(relay), gossh.PasswordCallback(password))
	if err != nil {
		c.log.Info("interactive login refused by vps", "vps", v.TaskID, "err", err)
		return false
	}
	c.route = r
	c.authDone.Store(true)
	c.grace.Stop()
	c.log = c.log.With("vps", r.vps.TaskID, "login_user", r.login)
	c.log.Info("authenticated", "remote_addr", c.remote.String(), "route", string(r.kind),
		"method", "keyboard-interactive", "owner", r.vps.Owner)
	c.finishHop(up, nil)
	return true
}

// resolveInteractive routes a login without a key: by user name or port
// only, and only to a VPS made without keys. named is the VPS as the
// client named it ("VPS web", "the VPS on port 9003"), for what is said
// to it before it has authenticated.
func (s *Server) resolveInteractive(ctx context.Context, vpsPort int, user string) (r route, named string, err error) {
	var (
		v     store.VPS
		login string
		kind  routeKind
	)
	if vpsPort != 0 {
		kind, login, named = routePort, user, vpsOnPort(vpsPort)
		if v, err = s.cfg.Directory.VPSByPort(ctx, vpsPort); err != nil {
			return route{}, "", err
		}
	} else {
		t, perr := ParseTarget(user)
		if perr != nil || t.Ref == "" {
			return route{}, "", fmt.Errorf("no VPS named in %q", printable(user))
		}
		kind, login, named = routeUsername, t.Login, "VPS "+printable(t.Ref)
		if v, err = s.cfg.Directory.VPS(ctx, t.Ref); err != nil {
			return route{}, "", err
		}
	}
	if v.KeyMode != store.KeyModeNone {
		return route{}, "", errors.New("vps takes keys only")
	}
	if login == "" {
		login = v.LoginUser
	}
	if err := store.ValidateLoginUser(login); err != nil {
		return route{}, "", err
	}
	return route{kind: kind, vps: v, login: login}, named, nil
}
