package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/store"
)

// Defaults for zero Config fields.
const (
	DefaultHeartbeatTimeout = 15 * time.Second
	DefaultImage            = "kohakuriver/vps:latest"
	DefaultGatewaySSHPort   = 8002
)

// MaxBodySize bounds every request body the API reads (413 beyond).
const MaxBodySize = 1 << 20

// Bounds on the host's calls to a node. The work continues when the API
// client goes away (see createVPS), so the host bounds it itself. Client's
// LongTimeout is longer so that a client sees the host's answer, 504
// included, rather than timing out first.
const (
	createTimeout    = 3 * time.Minute // image pull + sshd start
	lifecycleTimeout = 2 * time.Minute
	keysTimeout      = time.Minute
)

// Config configures a Server. Store, Agents, ClusterToken and
// CertAuthorityLine are required.
type Config struct {
	Store  store.Store
	Agents NodeAgent
	// ClusterToken authenticates the agent endpoints (HMAC, see
	// agent/clusterauth).
	ClusterToken string
	// CertAuthorityLine is the authorized_keys line ("cert-authority ...")
	// trusting the gateway's user CA; every VPS gets it so that the
	// gateway can log in with its certificate.
	CertAuthorityLine string
	// HopKeyLine, if set, returns the authorized_keys line of a VPS's plain
	// hop key (see gateway.HopKeys); every VPS gets it after the
	// cert-authority line so that sshds without certificate support
	// (Dropbear) admit the gateway too.
	HopKeyLine func(taskID string) string
	// GatewayHostKeys are the gateway's public host keys in
	// authorized_keys format, GatewaySSHPort (default 8002) its port and
	// PublicHost the name users reach it by: GET /api/v1/gateway.
	GatewayHostKeys []string
	GatewaySSHPort  int
	PublicHost      string
	// DefaultImage is used when a create request names none
	// (default DefaultImage).
	DefaultImage string
	// Logger receives request and lifecycle logs; nil discards them.
	Logger *slog.Logger
	// HeartbeatTimeout is how long a node may stay silent before the
	// monitor marks it offline (default 15s).
	HeartbeatTimeout time.Duration
	// Now is the clock of heartbeats and the node monitor (default
	// time.Now); tests inject one.
	Now func() time.Time
}

// Server is the host's HTTP API. It is an http.Handler, safe for concurrent
// use; RunNodeMonitor runs its background work.
type Server struct {
	st           store.Store
	agents       NodeAgent
	caLine       string
	hopKeyLine   func(taskID string) string
	gateway      GatewayInfo
	defaultImage string
	log          *slog.Logger
	hbTimeout    time.Duration
	now          func() time.Time
	handler      http.Handler
	// started is when this server was built: a VPS still pending from
	// before it was left half-created by a host that went away.
	started time.Time
	// owners orders VPS creation against user deletion. A create holds it
	// shared from its check that its user still exists until the record
	// is stored; a deletion holds it exclusively from its check that the
	// user owns no VPS until the user is gone. Without it, a VPS stored
	// between those two steps of a deletion would outlive its owner, whose
	// token no longer works, with nobody but an admin able to remove it.
	owners sync.RWMutex
}

// NewServer validates cfg and builds the API's routes.
func NewServer(cfg Config) (*Server, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("api: Config.Store is required")
	case cfg.Agents == nil:
		return nil, errors.New("api: Config.Agents is required")
	case !strings.HasPrefix(cfg.CertAuthorityLine, "cert-authority "):
		return nil, errors.New(`api: Config.CertAuthorityLine must be an authorized_keys line starting with "cert-authority "`)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DefaultImage == "" {
		cfg.DefaultImage = DefaultImage
	}
	if cfg.GatewaySSHPort == 0 {
		cfg.GatewaySSHPort = DefaultGatewaySSHPort
	}
	// The verifier keeps the wall clock: its replay window is about clock
	// skew between host and nodes, which an injected Now would hide.
	verifier, err := clusterauth.NewVerifier(cfg.ClusterToken)
	if err != nil {
		return nil, fmt.Errorf("api: cluster token: %w", err)
	}
	srv := &Server{
		st:         cfg.Store,
		agents:     cfg.Agents,
		caLine:     strings.TrimSpace(cfg.CertAuthorityLine),
		hopKeyLine: cfg.HopKeyLine,
		gateway: GatewayInfo{
			HostKeys:   append([]string{}, cfg.GatewayHostKeys...),
			SSHPort:    cfg.GatewaySSHPort,
			PublicHost: cfg.PublicHost,
		},
		defaultImage: cfg.DefaultImage,
		log:          cfg.Logger,
		hbTimeout:    cfg.HeartbeatTimeout,
		now:          cfg.Now,
	}
	srv.started = srv.now()
	srv.handler = srv.withRequestLog(srv.withRecover(srv.routes(verifier)))
	return srv, nil
}

// SetGatewaySSHPort sets the port GET /api/v1/gateway reports, for a
// gateway that learns its port only when it binds (":0"). Call it before
// the server handles requests: handlers read the port without a lock.
func (srv *Server) SetGatewaySSHPort(port int) { srv.gateway.SSHPort = port }

// ServeHTTP implements http.Handler.
func (srv *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	srv.handler.ServeHTTP(w, r)
}

// NewHTTPServer returns an http.Server for the API with the timeouts it
// needs:
//
//   - ReadHeaderTimeout 10s and ReadTimeout 1m: a client must send its
//     request (headers, and a body of at most MaxBodySize) promptly, so
//     slow clients cannot hold connections.
//   - No WriteTimeout: creating a VPS waits minutes for the node, and exec
//     streams for as long as the command runs. Handlers bound their node
//     calls themselves; exec ends when its client disconnects.
//   - IdleTimeout 2m for keep-alive connections, MaxHeaderBytes 64 KiB.
//
// Call Shutdown with a deadline to stop it: running exec streams are
// cancelled when their connections close.
func NewHTTPServer(addr string, handler http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}

// access is who may call an endpoint.
type access int

const (
	accessUser  access = iota // any valid API token
	accessAdmin               // an admin's API token
	accessAgent               // the cluster token's HMAC (clusterauth)
)

// apiHandler handles one request. A returned error is answered with its
// status and user message (see classify); a handler that has begun its
// answer must return nil.
type apiHandler func(w http.ResponseWriter, r *http.Request) error

func (srv *Server) routes(v *clusterauth.Verifier) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	handle := func(pattern string, acc access, h apiHandler) {
		mux.Handle(pattern, srv.serve(acc, h, v))
	}
	handle("GET /api/v1/whoami", accessUser, srv.whoami)
	handle("GET /api/v1/gateway", accessUser, srv.gatewayInfo)

	handle("POST /api/v1/users", accessAdmin, srv.createUser)
	handle("GET /api/v1/users", accessAdmin, srv.listUsers)
	handle("DELETE /api/v1/users/{name}", accessAdmin, srv.deleteUser)

	handle("POST /api/v1/vps", accessUser, srv.createVPS)
	handle("GET /api/v1/vps", accessUser, srv.listVPS)
	handle("GET /api/v1/vps/{ref}", accessUser, srv.getVPS)
	handle("POST /api/v1/vps/{ref}/stop", accessUser, srv.stopVPS)
	handle("POST /api/v1/vps/{ref}/start", accessUser, srv.startVPS)
	handle("POST /api/v1/vps/{ref}/restart", accessUser, srv.restartVPS)
	handle("DELETE /api/v1/vps/{ref}", accessUser, srv.deleteVPS)

	handle("GET /api/v1/vps/{ref}/keys", accessUser, srv.listKeys)
	handle("POST /api/v1/vps/{ref}/keys", accessUser, srv.addKeys)
	handle("DELETE /api/v1/vps/{ref}/keys/{fingerprint}", accessUser, srv.removeKey)

	handle("POST /api/v1/vps/{ref}/exec", accessUser, srv.exec)

	handle("GET /api/v1/nodes", accessUser, srv.listNodes)
	handle("GET /api/v1/nodes/{name}", accessUser, srv.getNode)

	handle("POST /api/v1/agent/register", accessAgent, srv.register)
	handle("POST /api/v1/agent/heartbeat", accessAgent, srv.heartbeat)

	// Everything else under /api/v1/ (unknown paths, wrong methods) still
	// needs a token, so the API's shape is not probed anonymously.
	handle("/api/v1/", accessUser, func(w http.ResponseWriter, r *http.Request) error {
		return errorf(http.StatusNotFound, "no endpoint %s %s; see the API documentation", r.Method, r.URL.Path)
	})
	return mux
}

// serve wraps h with the authentication acc requires.
func (srv *Server) serve(acc access, h apiHandler, v *clusterauth.Verifier) http.Handler {
	run := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			srv.writeError(w, r, err)
		}
	})
	if acc == accessAgent {
		// clusterauth answers refusals itself (401, 413, 503) and hands
		// on the verified body, read into memory, at most MaxBodySize.
		return clusterauth.MiddlewareWithLogger(v, srv.log, run)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := srv.authenticate(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="kohakuriver"`)
			srv.writeError(w, r, err)
			return
		}
		info(r).user = u.Name
		if acc == accessAdmin && !u.Admin {
			srv.writeError(w, r, errorf(http.StatusForbidden, "only admins may manage users; ask an admin, or use the admin token"))
			return
		}
		run.ServeHTTP(w, r.WithContext(withUser(r.Context(), u)))
	})
}

// writeError answers err as {"error": msg} and logs it; see classify.
func (srv *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ri := info(r)
	status, msg := classify(err, ri.id)
	ri.err = err
	writeJSON(w, status, errorBody{Error: msg})
}

// writeJSON answers status with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // a write error means the client left
}

// decodeJSON reads r's body, at most MaxBodySize bytes, into v. It
// refuses unknown fields, trailing data and an empty body with a message
// that names the problem.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if sw, ok := w.(*statusWriter); ok {
		w = sw.ResponseWriter // so MaxBytesReader can close the connection after a 413
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodySize))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if err := dec.Decode(&json.RawMessage{}); !errors.Is(err, io.EOF) {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return decodeError(err)
		}
		return errorf(http.StatusBadRequest, "request body must hold exactly one JSON object")
	}
	return nil
}

func decodeError(err error) error {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d KiB", MaxBodySize>>10)
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return errorf(http.StatusBadRequest, "request body is not valid JSON (at byte %d)", se.Offset)
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if te.Field == "" {
			return errorf(http.StatusBadRequest, "request body must be a JSON object")
		}
		return errorf(http.StatusBadRequest, "field %q must be a JSON %s", te.Field, jsonKind(te.Type.String()))
	}
	switch {
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "request body is empty; send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "request body is truncated JSON")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return errorf(http.StatusBadRequest, "%s in request body; check the field names (is the client newer than the host?)",
			strings.TrimPrefix(err.Error(), "json: "))
	}
	return errorf(http.StatusBadRequest, "cannot read request body: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// jsonKind names a Go type the way a JSON client thinks of it.
func jsonKind(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "array"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"), strings.HasPrefix(goType, "float"):
		return "number"
	case goType == "bool":
		return "boolean"
	case goType == "string", strings.HasSuffix(goType, "KeyMode"):
		return "string"
	}
	return "object"
}

// reqInfo is per-request state shared by the middlewares and handlers. id
// is set first and read-only after; user and err are set by the handler
// chain and read by withRequestLog after it returns.
type reqInfo struct {
	id   string
	log  *slog.Logger
	user string
	err  error
}

// newRequestID returns a short id that sorts by time: base36 milliseconds
// and 3 random bytes.
func newRequestID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return strconv.FormatInt(now.UnixMilli(), 36) + "-" + hex.EncodeToString(b[:])
}

// withRequestLog gives each request an id (X-Request-Id, shown in 500
// answers) and logs it when done: Debug normally, Warn for 5xx. The
// Authorization header and bodies are never logged.
func (srv *Server) withRequestLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &reqInfo{id: newRequestID(start)}
		ri.log = srv.log.With("request_id", ri.id)
		w.Header().Set("X-Request-Id", ri.id)
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r.WithContext(withInfo(r.Context(), ri)))
		level := slog.LevelDebug
		if sw.status >= 500 {
			level = slog.LevelWarn
		}
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", sw.status,
			"user", ri.user, "remote_addr", r.RemoteAddr, "duration", time.Since(start)}
		if ri.err != nil {
			attrs = append(attrs, "err", ri.err)
		}
		ri.log.Log(r.Context(), level, "api request", attrs...)
	})
}

// withRecover answers a panicking handler with 500 and logs the panic with
// the request id, instead of dropping the connection.
func (srv *Server) withRecover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			p := recover()
			if p == nil {
				return
			}
			if p == http.ErrAbortHandler { //nolint:errorlint // a sentinel value, compared as net/http does
				panic(p)
			}
			ri := info(r)
			ri.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p))
			if sw, ok := w.(*statusWriter); !ok || sw.status == 0 {
				srv.writeError(w, r, fmt.Errorf("panic: %v", p))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// statusWriter records the status for the request log. Unwrap lets
// http.ResponseController reach the real writer's Flush.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (sw *statusWriter) WriteHeader(status int) {
	if sw.status == 0 {
		sw.status = status
	}
	sw.ResponseWriter.WriteHeader(status)
}

func (sw *statusWriter) Write(b []byte) (int, error) {
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	return sw.ResponseWriter.Write(b)
}

func (sw *statusWriter) Unwrap() http.ResponseWriter { return sw.ResponseWriter }
