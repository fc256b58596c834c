package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/store"
)

// DefaultDialerTimeout bounds a Dialer's whole handshake when Timeout is 0.
const DefaultDialerTimeout = 10 * time.Second

const (
	// maxResponseHead bounds what Dial reads of the agent's answer before
	// the relayed bytes: status line, headers and an error body.
	maxResponseHead = 16 << 10
	maxErrorBody    = 4 << 10
)

// Dialer opens relays to VPS sshds through their node agents. Its fields
// must not change while Dial runs; a Dialer is safe for concurrent use.
type Dialer struct {
	// Token is the shared cluster token.
	Token string
	// Timeout bounds the TCP dial plus the upgrade handshake (not the
	// relay's lifetime). Zero means DefaultDialerTimeout.
	Timeout time.Duration
}

// Dial connects to the agent at agentAddr (host:port), asks it to relay to
// the sshd of VPS taskID, and returns the relayed connection: a *Conn, whose
// CloseWrite sends EOF to the sshd while its answer can still be read.
//
// Errors wrap one of ErrAgentUnreachable (dial, timeout, or a peer that does
// not speak the protocol), ErrUnauthorized, ErrUnknownVPS, ErrNotRunning,
// ErrUnreachable, ErrBadRequest or ErrRefused, followed by the agent's
// explanation; when ctx ends first they also wrap ctx's error.
func (d *Dialer) Dial(ctx context.Context, agentAddr, taskID string) (net.Conn, error) {
	return d.dial(ctx, "tcp", agentAddr, taskID)
}

// DialLocal asks the agent listening on the unix socket socketPath (see
// ListenLocal) for a handoff: the agent dials the sshd of VPS taskID and
// passes that TCP socket over, so that no process relays the bytes. It
// returns the socket (a *net.TCPConn) and errors like Dial's; a socket that
// cannot be reached, is served by another user than this one or root, or a
// peer that does not hand off, gives ErrAgentUnreachable, after which the
// caller may relay with Dial instead.
func (d *Dialer) DialLocal(ctx context.Context, socketPath, taskID string) (net.Conn, error) {
	return d.dial(ctx, "unix", socketPath, taskID)
}

// dial runs a relay request over network ("tcp": a relay; "unix": a
// handoff) to addr.
func (d *Dialer) dial(ctx context.Context, network, addr, taskID string) (net.Conn, error) {
	if !store.IsTaskID(taskID) {
		return nil, fmt.Errorf("%w: task id %q is not 19 digits", ErrBadRequest, taskID)
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultDialerTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAgentUnreachable, err)
	}
	if uc, ok := c.(*net.UnixConn); ok {
		// Only an agent of this user (or root) may hand us a socket: a path
		// reported by a node is not trusted to name one.
		if uid, err := peerUID(uc); err != nil || (uid != os.Geteuid() && uid != 0) {
			c.Close()
			return nil, fmt.Errorf("%w: %s is served by uid %d, neither this user's nor root's (%v)", ErrAgentUnreachable, addr, uid, err)
		}
	}
	conn, err := d.handshake(ctx, c, addr, taskID)
	if err != nil || network == "unix" {
		c.Close() // a handoff's answer came with a socket of its own
	}
	if err != nil {
		return nil, err
	}
	return conn, nil
}

func (d *Dialer) handshake(ctx context.Context, c net.Conn, agentAddr, taskID string) (net.Conn, error) {
	// When ctx ends (Timeout, or the caller cancels) AfterFunc sets a past
	// deadline that unblocks the read or write in progress. No deadline is
	// set from ctx.Deadline up front: then the socket could time out before
	// ctx reports why.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	conn, err := d.exchange(c, agentAddr, taskID)
	stop()
	if cause := context.Cause(ctx); ctx.Err() != nil {
		// ctx ended during the exchange: a completed one may already have
		// its deadline in the past, and a failed read was caused by it.
		switch {
		case err == nil:
			conn.Close()
			return nil, fmt.Errorf("%w: handshake: %w", ErrAgentUnreachable, cause)
		case errors.Is(err, ErrAgentUnreachable):
			return nil, fmt.Errorf("%w (%w)", err, cause)
		}
	}
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return conn, nil
}

// exchange writes the signed upgrade request and reads the answer: on a
// unix socket a handoff, whose 101 carries the socket to use.
func (d *Dialer) exchange(c net.Conn, agentAddr, taskID string) (net.Conn, error) {
	protocol, host := Protocol, agentAddr
	uc, local := c.(*net.UnixConn)
	if local {
		protocol, host = HandoffProtocol, "agent.local"
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+host+PathPrefix+taskID, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", protocol)
	req.Header.Set("User-Agent", Protocol)
	clusterauth.Sign(req, d.Token, nil)
	if err := req.Write(c); err != nil {
		return nil, fmt.Errorf("%w: send handshake: %w", ErrAgentUnreachable, err)
	}

	var src io.Reader = c
	var rights *rightsReader
	if local {
		rights = &rightsReader{c: uc}
		defer rights.closeAll()
		src = rights
	}
	br := bufio.NewReader(&io.LimitedReader{R: src, N: maxResponseHead})
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("%w: read handshake answer: %w", ErrAgentUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, statusError(resp)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), protocol) {
		return nil, fmt.Errorf("%w: peer upgraded to %q, not %s", ErrAgentUnreachable, resp.Header.Get("Upgrade"), protocol)
	}
	if local {
		// The sshd's bytes arrive on the passed socket; none may follow
		// the answer here.
		if br.Buffered() > 0 {
			return nil, fmt.Errorf("%w: %d stray bytes after the handoff answer", ErrAgentUnreachable, br.Buffered())
		}
		return rights.takeConn()
	}
	// Bytes read past the answer already belong to the relay (sshd
	// speaks first, so its banner often shares a segment with the 101).
	n := br.Buffered()
	early, _ := br.Peek(n) // cannot fail: n bytes are buffered
	return newConn(c, early), nil
}

// statusError maps a refusal to its sentinel, with the agent's message.
func statusError(resp *http.Response) error {
	var body errorBody
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	isJSON := json.Unmarshal(raw, &body) == nil && body.Error != ""
	msg := body.Error
	if !isJSON {
		msg = fmt.Sprintf("HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	if body.RelayID != "" {
		msg += " (relay " + body.RelayID + ")"
	}
	var sentinel error
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		sentinel = ErrUnauthorized
	case http.StatusNotFound:
		sentinel = ErrUnknownVPS
		if !isJSON { // a plain 404: the peer has no relay endpoint at all
			sentinel, msg = ErrRefused, "no relay endpoint at this address ("+msg+")"
		}
	case http.StatusConflict:
		sentinel = ErrNotRunning
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		sentinel = ErrUnreachable
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusUpgradeRequired:
		sentinel = ErrBadRequest
	default:
		sentinel = ErrRefused
	}
	return fmt.Errorf("%w: agent: %s", sentinel, oneLine(msg))
}

// oneLine keeps a peer-supplied message printable and short.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 200 {
		s = strings.ToValidUTF8(s[:200], "") + "..."
	}
	return s
}

// Conn is a relayed connection returned by Dialer.Dial. Reads first return
// the bytes that arrived with the handshake answer, then read the socket.
// Like the net.Conn it wraps, it is safe for one reader and one writer at a
// time.
type Conn struct {
	net.Conn
	early []byte // read-side only: unread bytes from the handshake
}

func newConn(c net.Conn, early []byte) *Conn {
	return &Conn{Conn: c, early: append([]byte(nil), early...)}
}

// Read implements io.Reader.
func (c *Conn) Read(p []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(p, c.early)
		c.early = c.early[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// WriteConn returns the socket below c: writes to c go to it unchanged, so
// a caller may give it vectored writes (writev(2)), which c's own method
// set cannot offer.
func (c *Conn) WriteConn() net.Conn { return c.Conn }

// CloseWrite shuts down the writing side: the sshd reads EOF, and its
// remaining output can still be read from c.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return errors.New("relay conn cannot half-close")
}

// CloseRead shuts down the reading side.
func (c *Conn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return errors.New("relay conn cannot half-close")
}

// ReadFrom lets io.Copy into c use the socket's fast path (splice(2) from
// another socket on Linux).
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{c.Conn}, r)
}
