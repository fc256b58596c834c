package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

type ctxKey struct{ name string }

var connCtxKey = &ctxKey{"kohakuriver-conn"}

// conn is the state of one downstream connection.
//
// Callback order (each runs once, in this order, except where noted):
//
//	onConnect        accept; sets the immutable fields, arms the grace timer
//	serverConfig     builds the x/crypto config; records preAuth
//	mayAuthenticate  per offered key (possibly many times); reads only
//	onVerified       after a signature checks out: sets route, authDone,
//	                 then starts the hop
//	handleChannel / handleGlobalRequest   after auth; wait for the hop
//	close            once, from whichever side ends first
type conn struct {
	// Set in onConnect, read-only afterwards.
	srv     *Server
	id      string
	log     *slog.Logger
	remote  net.Addr
	vpsPort int // listener's VPS port; 0 on the main port
	start   time.Time
	counted *countingConn
	netConn net.Conn
	grace   *time.Timer
	slot    bool // holds a connSlots slot
	// ctx ends when the downstream connection ends (gliderlabs cancels it)
	// or close is called.
	ctx    context.Context
	cancel context.CancelCauseFunc

	// ciphers offered to this client, chosen from its version string in
	// onConnect.
	ciphers []string

	// Set in serverConfig, then read-only.
	preAuth gossh.ServerPreAuthConn

	// mu guards bannerSent and interactiveTries; route is written once in onVerified before
	// authDone is published, and read-only after.
	mu               sync.Mutex
	bannerSent       bool
	interactiveTries int
	route            route
	authDone         atomic.Bool

	// Set by startHop before hopDone is closed; read-only after.
	hopDone chan struct{}
	// hopLost is closed when the hop's socket failed (set with up).
	hopLost <-chan struct{}
	up      *upstream
	hopErr  error

	// Relay accounting.
	channels    atomic.Int32 // open channel pairs
	recordings  atomic.Int32 // session recordings started
	forwards    atomic.Int32 // remote forwards requested
	sessionGate sessionGate  // no-more-sessions@openssh.com
	// pipes counts open channel pairs, for waitPipes. pipesClosed, under
	// pipesMu, stops new pairs once waitPipes has begun: a WaitGroup must
	// not go up from zero while Wait runs.
	pipes       sync.WaitGroup
	pipesMu     sync.Mutex
	pipesClosed bool
	exitMu      sync.Mutex
	exits       []string // exit statuses/signals seen, for the log
	opened      []string // forwards opened, for the audit record

	// downReady is closed once down is set: the downstream connection is
	// usable for opening channels and sending requests toward the client.
	downOnce  sync.Once
	downReady chan struct{}
	down      gossh.Conn

	// sessions are the client's open session channels, for last words
	// (tellSessions); guarded by mu.
	sessions map[gossh.Channel]struct{}

	closeOnce sync.Once
}

func (c *conn) trackSession(ch gossh.Channel, add bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !add {
		delete(c.sessions, ch)
		return
	}
	if c.sessions == nil {
		c.sessions = map[gossh.Channel]struct{}{}
	}
	c.sessions[ch] = struct{}{}
}

// tellSessions writes a last message to the stderr of every open session,
// before the gateway closes the connection under them.
func (c *conn) tellSessions(msg string) {
	c.mu.Lock()
	chs := make([]gossh.Channel, 0, len(c.sessions))
	for ch := range c.sessions {
		chs = append(chs, ch)
	}
	c.mu.Unlock()
	line := "\r\nkohakuriver: " + msg + " (conn " + c.id + ")\r\n"
	for _, ch := range chs {
		_, _ = ch.Stderr().Write([]byte(line))
	}
}

func newConnID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	// Milliseconds first so ids sort by time; 24 random bits to split ties.
	ms := uint64(time.Now().UnixMilli())
	ts := []byte{byte(ms >> 32), byte(ms >> 24), byte(ms >> 16), byte(ms >> 8), byte(ms)}
	return hex.EncodeToString(ts) + hex.EncodeToString(b[:])
}

func connFrom(ctx context.Context) *conn {
	c, _ := ctx.Value(connCtxKey).(*conn)
	return c
}

// onConnect is gliderlabs' ConnCallback: the first thing run for every
// accepted TCP connection.
func (s *Server) onConnect(ctx gliderssh.Context, nc net.Conn) net.Conn {
	info := listenerInfo{}
	if tc, ok := nc.(taggedConn); ok {
		info = tc.info
		nc = tc.Conn
	}
	if s.throttle.banned(nc.RemoteAddr()) {
		s.metrics.authFailed("banned")
		s.log.Debug("connection refused: source banned after failed logins", "remote_addr", nc.RemoteAddr().String())
		return nil
	}
	select {
	case s.connSlots <- struct{}{}:
	default:
		s.log.Warn("connection refused: too many connections", "remote_addr", nc.RemoteAddr().String())
		return nil
	}
	cctx, cancel := context.WithCancelCause(ctx)
	c := &conn{
		srv:       s,
		id:        newConnID(),
		remote:    nc.RemoteAddr(),
		vpsPort:   info.vpsPort,
		start:     time.Now(),
		slot:      true,
		ctx:       cctx,
		cancel:    cancel,
		hopDone:   make(chan struct{}),
		downReady: make(chan struct{}),
	}
	c.log = s.log.With("conn_id", c.id)
	version, peeked := peekVersion(nc)
	c.ciphers = s.ciphersFor(version)
	c.counted = &countingConn{Conn: newReadAheadConn(newCoalesceConn(peeked))}
	c.netConn = nc
	if !s.trackConn(c, true) {
		<-s.connSlots
		return nil
	}
	ctx.SetValue(connCtxKey, c)
	if info.vpsPort != 0 {
		s.metrics.connOpened("vps_port")
	} else {
		s.metrics.connOpened("main")
	}
	// gliderlabs v0.3.8 has no handshake timeout and resets deadlines on
	// every read, so a deadline would not survive: a timer that closes the
	// socket unless auth finished does.
	// The timer has its own logger: onVerified replaces c.log once auth
	// is done, which may race with the timer firing.
	graceLog := c.log
	c.grace = time.AfterFunc(s.cfg.LoginGraceTime, func() {
		if !c.authDone.Load() {
			graceLog.Info("login grace time exceeded", "remote_addr", c.remote.String())
			s.metrics.authFailed("timeout")
			nc.Close()
		}
	})
	// Not a goroutine per conn parked on Done: AfterFunc costs nothing
	// until the context ends.
	context.AfterFunc(c.ctx, c.end)
	c.log.Debug("connection accepted", "remote_addr", c.remote.String(), "vps_port", c.vpsPort)
	return c.counted
}

// onHandshakeFailed runs when the SSH handshake or auth fails.
func (s *Server) onHandshakeFailed(nc net.Conn, err error) {
	s.log.Debug("handshake failed", "remote_addr", nc.RemoteAddr().String(), "err", err)
}

// end ends the conn once its context has ended (the downstream connection
// closed: gliderlabs cancels the context when it closes the socket).
func (c *conn) end() { c.close(context.Cause(c.ctx)) }

// close ends the connection from whichever side: stops the hop, closes the
// downstream socket, releases the slot and writes the summary log line.
func (c *conn) close(cause error) {
	c.closeOnce.Do(func() {
		c.cancel(cause)
		c.grace.Stop()
		c.netConn.Close()
		// The hop goroutine closes hopDone in every case; after that, up
		// is read-only.
		<-c.hopDoneOrNever()
		if c.up != nil {
			c.up.client.Close()
		}
		c.srv.trackConn(c, false)
		if c.slot {
			<-c.srv.connSlots
		}
		c.srv.metrics.connClosed(c.counted.in.Load(), c.counted.out.Load())
		if !c.authDone.Load() {
			c.srv.metrics.authFailed("unauthenticated")
			if c.srv.throttle.fail(c.remote) {
				c.log.Warn("source banned after repeated failed logins", "remote_addr", c.remote.String(),
					"ban", c.srv.throttle.banDuration().String())
			}
		}
		c.logSummary(cause)
	})
}

// hopDoneOrNever returns hopDone if a hop was started, else a closed
// channel: close must not wait for a hop that will never run.
func (c *conn) hopDoneOrNever() <-chan struct{} {
	if c.authDone.Load() {
		return c.hopDone
	}
	done := make(chan struct{})
	close(done)
	return done
}

func (c *conn) logSummary(cause error) {
	if !c.authDone.Load() {
		c.log.Debug("connection closed before auth", "remote_addr", c.remote.String(),
			"duration", time.Since(c.start).Round(time.Millisecond).String())
		return
	}
	r := c.route
	c.exitMu.Lock()
	exits := append([]string(nil), c.exits...)
	opened := append([]string(nil), c.opened...)
	c.exitMu.Unlock()
	// c.log has carried vps and login_user since the login was admitted
	// (auth.go, interactive.go): adding them again would write each key
	// twice into the JSON record. The audit log is a logger of its own and
	// gets them below.
	attrs := []any{
		"remote_addr", c.remote.String(),
		"route", string(r.kind),
		"node", r.vps.Node,
		"owner", r.vps.Owner,
		"key_fingerprint", r.fingerprint,
		"start", c.start.UTC().Format(time.RFC3339Nano),
		"end", time.Now().UTC().Format(time.RFC3339Nano),
		"duration", time.Since(c.start).Round(time.Millisecond).String(),
		"bytes_in", c.counted.in.Load(),
		"bytes_out", c.counted.out.Load(),
		"exit", exits,
		"forwards", opened,
	}
	if c.hopErr != nil {
		attrs = append(attrs, "hop_err", c.hopErr.Error())
	}
	if cause != nil && !errors.Is(cause, context.Canceled) {
		attrs = append(attrs, "reason", cause.Error())
	}
	c.log.Info("session ended", attrs...)
	if c.srv.cfg.Audit != nil {
		c.srv.cfg.Audit.Info("ssh session", append(attrs, "conn_id", c.id, "vps", r.vps.TaskID, "login_user", r.login)...)
	}
}

// recordForward notes a forward for the audit record (bounded).
func (c *conn) recordForward(s string) {
	c.exitMu.Lock()
	defer c.exitMu.Unlock()
	if len(c.opened) < 64 {
		c.opened = append(c.opened, s)
	}
}

func (c *conn) recordExit(s string) {
	c.exitMu.Lock()
	defer c.exitMu.Unlock()
	if len(c.exits) < 32 {
		c.exits = append(c.exits, s)
	}
}

// countingConn counts bytes each way for the connection log.
type countingConn struct {
	net.Conn
	in, out atomic.Int64
}

func (cc *countingConn) Read(p []byte) (int, error) {
	n, err := cc.Conn.Read(p)
	cc.in.Add(int64(n))
	return n, err
}

func (cc *countingConn) Write(p []byte) (int, error) {
	n, err := cc.Conn.Write(p)
	cc.out.Add(int64(n))
	return n, err
}

// route is where an authenticated connection goes.
type route struct {
	kind        routeKind
	vps         store.VPS
	login       string
	fingerprint string
}

type routeKind string

const (
	routeUsername routeKind = "username"
	routePort     routeKind = "port"
	routeKey      routeKind = "key"
)

func (c *conn) setDownstream(sc gossh.Conn) {
	c.downOnce.Do(func() {
		c.down = sc
		close(c.downReady)
	})
}

// downstream returns the client connection for traffic the VPS starts, or
// nil if the connection ended. gliderlabs publishes the *gossh.ServerConn in
// the context only after the handshake returns, microseconds after auth,
// while the hop may already deliver requests: so wait for it, polling the
// context briefly when no client request has delivered it yet.
func (c *conn) downstream() gossh.Conn {
	select {
	case <-c.downReady:
		return c.down
	default:
	}
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		if sc, ok := c.ctx.Value(gliderssh.ContextKeyConn).(*gossh.ServerConn); ok {
			c.setDownstream(sc)
		}
		select {
		case <-c.downReady:
			return c.down
		case <-c.ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
