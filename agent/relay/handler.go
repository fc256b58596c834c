package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/agent/netns"
	"github.com/kohakuriver/kohakuriver/store"
)

// Protocol constants of the relay handshake.
const (
	// Protocol is the Upgrade token of the relay.
	Protocol = "kohakuriver-relay/1"
	// PathPrefix is followed by the 19-digit task id.
	PathPrefix = "/v1/relay/"
	// Pattern is the http.ServeMux pattern to mount a Handler on.
	Pattern = "GET " + PathPrefix + "{task_id}"
)

// Defaults of a Handler; see the With options.
const (
	DefaultMaxRelays        = 4096
	DefaultDialTimeout      = 5 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
)

// Targets resolves a VPS to the address of its sshd. The agent implements it
// from what it runs; the relay dials exactly the address it returns and
// nothing else (or, with NamespaceTargets, the addresses SSHTarget returns).
type Targets interface {
	// SSHAddr returns host:port of the sshd of VPS taskID, normally the
	// container's address on its Docker network. It returns an error wrapping
	// ErrUnknownVPS when the agent does not run that VPS and ErrNotRunning
	// when it is stopped. It must return promptly when ctx is done.
	SSHAddr(ctx context.Context, taskID string) (string, error)
}

// Handler serves relay upgrade requests (see Pattern) and owns every relay
// it opens. Serve it from an http.Server with a header timeout and size
// limit, such as NewHTTPServer returns. Hijacked connections are no longer
// the http.Server's: shutting that server down does not end relays; call
// Handler.Close for that.
//
// Request order: verify the signature (401); check method, upgrade headers,
// body and path (405, 426, 400); take a relay slot (503); resolve the target
// with Targets (404, 409, 500); dial it within the dial timeout (502); hijack
// and answer 101; copy bytes both ways until both directions end. A handoff
// (HandoffProtocol, served only on a unix socket from ListenLocal) ends
// instead with the 101 carrying the dialled socket, and the slot is freed:
// the relay is the requester's from then on, and Close does not reach it.
// Nothing is dialled before the request is authenticated and the task id is
// valid.
type Handler struct {
	// Set by NewHandler and its options; read-only afterwards.
	verifier         *clusterauth.Verifier
	targets          Targets
	logger           *slog.Logger
	maxRelays        int
	dialTimeout      time.Duration
	handshakeTimeout time.Duration
	dialer           net.Dialer
	nsDial           namespaceDial
	nsDialTimeout    time.Duration
	ctx              context.Context // cancelled by Close: aborts resolves and dials
	cancel           context.CancelFunc

	// namespaceDenied is set once entering a namespace failed for lack of
	// privileges; from then on dials go straight to the container address.
	namespaceDenied atomic.Bool
	// namespaceFailed is set by the first namespace dial that failed for
	// another reason (logged at Info once, then at Debug).
	namespaceFailed atomic.Bool

	// mu guards closed and relays, and the conn fields of every relay in
	// relays. No other lock is taken under it, and no I/O is done under it
	// other than closing conns.
	mu     sync.Mutex
	closed bool
	relays map[*relayState]struct{} // every request holding a slot, from reserve to release
	wg     sync.WaitGroup           // one count per entry of relays
}

// relayState is one request from slot reservation to the end of its relay.
type relayState struct {
	id     string
	taskID string
	// target and client are set (under Handler.mu) once dialled and once
	// hijacked; Handler.Close closes whichever are set.
	target net.Conn
	client net.Conn
}

// Option configures a Handler; see NewHandler.
type Option func(*Handler) error

// WithMaxRelays caps concurrent relays, counting requests still resolving or
// dialling; past it requests get 503. The default is DefaultMaxRelays.
func WithMaxRelays(n int) Option {
	return func(h *Handler) error {
		if n < 1 {
			return fmt.Errorf("max relays %d is below 1", n)
		}
		h.maxRelays = n
		return nil
	}
}

// WithDialTimeout bounds resolving and dialling the target. The default is
// DefaultDialTimeout.
func WithDialTimeout(d time.Duration) Option {
	return func(h *Handler) error {
		if d <= 0 {
			return fmt.Errorf("dial timeout %s is not positive", d)
		}
		h.dialTimeout = d
		return nil
	}
}

// WithHandshakeTimeout bounds writing the 101 answer and the bytes the
// client sent ahead of it. The default is DefaultHandshakeTimeout.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(h *Handler) error {
		if d <= 0 {
			return fmt.Errorf("handshake timeout %s is not positive", d)
		}
		h.handshakeTimeout = d
		return nil
	}
}

// NewHandler returns a Handler that authenticates requests with v and relays
// to what targets returns, logging to logger (nil: nowhere). The caller owns
// it and must Close it after its http.Server stops accepting requests.
func NewHandler(v *clusterauth.Verifier, targets Targets, logger *slog.Logger, opts ...Option) (*Handler, error) {
	if v == nil || targets == nil {
		return nil, errors.New("new relay handler: nil verifier or targets")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{
		verifier:         v,
		targets:          targets,
		logger:           logger,
		maxRelays:        DefaultMaxRelays,
		dialTimeout:      DefaultDialTimeout,
		handshakeTimeout: DefaultHandshakeTimeout,
		nsDial:           netns.Dial,
		nsDialTimeout:    namespaceDialTimeout,
		relays:           make(map[*relayState]struct{}),
	}
	for _, opt := range opts {
		if err := opt(h); err != nil {
			return nil, fmt.Errorf("new relay handler: %w", err)
		}
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	return h, nil
}

// Active reports how many relays are open or being opened.
func (h *Handler) Active() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.relays)
}

// Close refuses new relays (503), aborts those being opened, closes the
// connections of open ones and waits until every ServeHTTP call holding a
// relay has returned. It is safe to call more than once and concurrently.
func (h *Handler) Close() error {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		h.cancel()
		if len(h.relays) > 0 {
			h.logger.Info("closing relays", "count", len(h.relays))
		}
		for rs := range h.relays {
			h.logger.Debug("closing relay", "relay_id", rs.id, "task_id", rs.taskID)
			closeIfSet(rs.target)
			closeIfSet(rs.client)
		}
	}
	h.mu.Unlock()
	h.wg.Wait()
	return nil
}

func closeIfSet(c net.Conn) {
	if c != nil {
		c.Close()
	}
}

// ServeHTTP implements http.Handler; see the Handler doc for the order of
// checks. It returns when the relay has ended.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := newRelayID()
	log := h.logger.With("relay_id", id, "remote_addr", r.RemoteAddr)
	refuse := func(status int, msg string) {
		w.Header().Set("Connection", "close")
		writeError(w, status, id, msg)
	}

	if err := h.verifier.Verify(r, nil); err != nil {
		status := http.StatusUnauthorized
		if errors.Is(err, clusterauth.ErrNonceCacheFull) {
			status = http.StatusServiceUnavailable
		}
		log.Warn("relay refused", "status", status, "err", err)
		refuse(status, err.Error()) // Verify's errors are safe to show
		return
	}
	taskID, handoff, status, msg := checkRequest(r)
	if status != 0 {
		log.Warn("relay refused", "status", status, "err", msg)
		if status == http.StatusUpgradeRequired {
			w.Header().Set("Upgrade", Protocol)
		}
		refuse(status, msg)
		return
	}
	log = log.With("task_id", taskID)

	rs, msg := h.reserve(id, taskID)
	if rs == nil {
		log.Warn("relay refused", "status", http.StatusServiceUnavailable, "err", msg)
		refuse(http.StatusServiceUnavailable, msg)
		return
	}
	defer h.release(rs)

	start := time.Now()
	target, addr, status, msg := h.dialTarget(r.Context(), log, taskID)
	if target == nil {
		refuse(status, msg)
		return
	}
	if !h.attach(rs, &rs.target, target) {
		refuse(http.StatusServiceUnavailable, "node agent is shutting down")
		return
	}
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		log.Error("relay hijack failed", "err", err)
		target.Close()
		refuse(http.StatusInternalServerError, "connection cannot be upgraded")
		return
	}
	if !h.attach(rs, &rs.client, client) {
		target.Close()
		return
	}
	// Hijacked conns may carry the server's read/write deadlines; a relay
	// lives as long as the SSH connection inside it.
	client.SetDeadline(time.Time{})
	if handoff {
		err := h.handOff(client, target, brw.Reader)
		client.Close()
		target.Close()
		if err != nil {
			log.Info("relay handoff failed", "target", addr, "err", err)
			return
		}
		log.Info("relay handed off", "target", addr, "setup", time.Since(start))
		return
	}
	if err := h.switchProtocols(client, target, brw.Reader); err != nil {
		log.Info("relay handshake failed", "target", addr, "err", err)
		client.Close()
		target.Close()
		return
	}
	log.Info("relay open", "target", addr, "setup", time.Since(start))
	up, down, err := pipe(client, target)
	attrs := []any{"duration", time.Since(start), "bytes_up", up, "bytes_down", down}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	log.Info("relay closed", attrs...)
}

// checkRequest validates what Verify does not: the method, the upgrade
// headers, the absence of a body, and the exact path shape. It returns the
// task id and whether the request asks for a handoff (only on the local
// socket), or an HTTP status and a message for the peer.
func checkRequest(r *http.Request) (taskID string, handoff bool, status int, msg string) {
	if r.Method != http.MethodGet {
		return "", false, http.StatusMethodNotAllowed, "relay requests use GET"
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		return "", false, http.StatusBadRequest, "relay requests carry no body"
	}
	// RawPath is set only when the path was percent-encoded: refuse that
	// rather than reason about what it decodes to.
	id, ok := strings.CutPrefix(r.URL.Path, PathPrefix)
	if !ok || r.URL.RawPath != "" || !store.IsTaskID(id) {
		return "", false, http.StatusBadRequest, "path must be " + PathPrefix + "<19-digit task id>"
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") {
		return "", false, http.StatusUpgradeRequired, "request must upgrade to " + Protocol
	}
	switch {
	case headerHasToken(r.Header, "Upgrade", Protocol):
		return id, false, 0, ""
	case headerHasToken(r.Header, "Upgrade", HandoffProtocol):
		if !onLocalSocket(r) {
			return "", false, http.StatusBadRequest, "a handoff is served only on the agent's local socket; relay over TCP with " + Protocol
		}
		return id, true, 0, ""
	}
	return "", false, http.StatusUpgradeRequired, "request must upgrade to " + Protocol
}

// headerHasToken reports whether a comma-separated header contains token,
// case-insensitively (RFC 9110 sections 7.6.1 and 7.8).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// reserve takes a relay slot, or returns nil and the reason.
func (h *Handler) reserve(id, taskID string) (*relayState, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, "node agent is shutting down"
	}
	if len(h.relays) >= h.maxRelays {
		return nil, "node agent is at its limit of " + strconv.Itoa(h.maxRelays) + " relays"
	}
	rs := &relayState{id: id, taskID: taskID}
	h.relays[rs] = struct{}{}
	h.wg.Add(1)
	return rs, ""
}

func (h *Handler) release(rs *relayState) {
	h.mu.Lock()
	delete(h.relays, rs)
	h.mu.Unlock()
	h.wg.Done()
}

// attach publishes c in *field so Close can reach it. It returns false, and
// closes c, when the Handler was closed in the meantime.
func (h *Handler) attach(rs *relayState, field *net.Conn, c net.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		c.Close()
		return false
	}
	*field = c
	return true
}

// dialTarget resolves and dials the VPS's sshd. On failure it returns a nil
// conn and the status and message for the peer; it logs the detail.
func (h *Handler) dialTarget(reqCtx context.Context, log *slog.Logger, taskID string) (net.Conn, string, int, string) {
	ctx, cancel := context.WithTimeout(reqCtx, h.dialTimeout)
	defer cancel()
	stop := context.AfterFunc(h.ctx, cancel) // Close aborts the dial
	defer stop()

	t, err := h.resolveTarget(ctx, taskID)
	switch {
	case errors.Is(err, ErrUnknownVPS):
		log.Info("relay refused", "status", http.StatusNotFound, "err", err)
		return nil, "", http.StatusNotFound, "no vps " + taskID + " on this node"
	case errors.Is(err, ErrNotRunning):
		log.Info("relay refused", "status", http.StatusConflict, "err", err)
		return nil, "", http.StatusConflict, "vps " + taskID + " is not running"
	case err != nil:
		log.Error("relay target lookup failed", "err", err)
		return nil, "", http.StatusInternalServerError, "node agent could not look up vps " + taskID
	}
	c, addr, err := h.dialSSHD(ctx, log, t)
	if err != nil {
		log.Warn("relay target dial failed", "target", addr, "err", err)
		if h.ctx.Err() != nil {
			return nil, "", http.StatusServiceUnavailable, "node agent is shutting down"
		}
		return nil, "", http.StatusBadGateway, "sshd of vps " + taskID + " not reachable"
	}
	return c, addr, 0, ""
}

var switchingProtocols = []byte("HTTP/1.1 101 Switching Protocols\r\n" +
	"Connection: Upgrade\r\n" +
	"Upgrade: " + Protocol + "\r\n\r\n")

// switchProtocols answers 101 on the hijacked client and forwards to target
// any bytes the client sent behind its request (they sit in br, read ahead
// by net/http), so that pipe can then copy socket to socket.
func (h *Handler) switchProtocols(client, target net.Conn, br bufferedReader) error {
	deadline := time.Now().Add(h.handshakeTimeout)
	client.SetWriteDeadline(deadline)
	if _, err := client.Write(switchingProtocols); err != nil {
		return fmt.Errorf("write 101: %w", err)
	}
	client.SetWriteDeadline(time.Time{})
	return forwardEarly(target, br, deadline)
}

// newRelayID returns a short id that sorts by creation time: base-36
// milliseconds then 4 random hex digits.
func newRelayID() string {
	var b [2]byte
	_, _ = rand.Read(b[:]) // never fails
	return strconv.FormatInt(time.Now().UnixMilli(), 36) + hex.EncodeToString(b[:])
}

// errorBody is the JSON body of every refusal.
type errorBody struct {
	Error   string `json:"error"`
	RelayID string `json:"relay_id,omitempty"`
}
