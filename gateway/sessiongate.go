package gateway

import (
	"sync"
	"time"
)

// reqNoMoreSessions is the client's promise that it opens no further
// session channels (OpenSSH's ssh sends it right after its one session, or
// at once with -N, unless it is a multiplexing master). A session opened
// after it is someone abusing the client's connection: OpenSSH's sshd then
// drops the connection, and so does the gateway.
const reqNoMoreSessions = "no-more-sessions@openssh.com"

// lateSessionGrace is how long after no-more-sessions the connection's
// first session may still arrive. x/crypto hands channel opens and global
// requests to separate goroutines, so the open that ssh sent just before
// the request can reach the gateway's handler just after it. Relaying the
// request to the VPS would lose the same race there (sshd would take that
// session for an attack), so the gateway enforces the promise itself.
const lateSessionGrace = 2 * time.Second

// sessionGate enforces no-more-sessions for one connection.
type sessionGate struct {
	mu       sync.Mutex
	closedAt time.Time // when no-more-sessions arrived; zero before
	admitted int       // session channels let through
}

// close records no-more-sessions.
func (g *sessionGate) close(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closedAt.IsZero() {
		g.closedAt = now
	}
}

// admit says whether a session channel the client opens now may proceed:
// always before no-more-sessions; after it, only as the connection's first
// session and within lateSessionGrace (the open that raced the request).
func (g *sessionGate) admit(now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closedAt.IsZero() && (g.admitted > 0 || now.Sub(g.closedAt) >= lateSessionGrace) {
		return false
	}
	g.admitted++
	return true
}
