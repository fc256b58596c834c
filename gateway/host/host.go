// Package host wires the host process (`kohakuriver host`): the embedded
// store, the gateway's identity, the SSH gateway, the HTTP API and the node
// monitor. End-to-end tests start it on :0 ports.
package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/agent/control"
	"github.com/kohakuriver/kohakuriver/agent/relay"
	"github.com/kohakuriver/kohakuriver/gateway"
	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/store"
	"github.com/kohakuriver/kohakuriver/store/embedded"
)

// Config configures a Host. Zero values take the defaults.
type Config struct {
	// DataDir holds the store and the token files (default ./.kohakuriver).
	DataDir string
	// APIAddr is the HTTP API listener (default ":8000").
	APIAddr string
	// SSHAddr is the gateway's main listener (default ":8002").
	SSHAddr string
	// PortHost is the bind address of per-VPS ports ("" = all).
	PortHost string
	// PortMin and PortMax bound the per-VPS SSH ports (9000-9999).
	PortMin, PortMax int
	// PublicHost is how users reach this host (shown in hints and the
	// generated ssh config). Default "localhost".
	PublicHost string
	// PublicSSHPort is the gateway port users connect to when it is not
	// the one bound (NAT, a container's port mapping): reported by the API
	// and shown in hints. 0 means the bound port.
	PublicSSHPort int
	// AdminAddr serves /metrics, /healthz and /readyz; empty disables it.
	// It has no authentication: bind it to loopback or a private network.
	AdminAddr string
	// RecordSessions records terminal sessions as asciicast files under
	// DataDir/recordings (see gateway.RecordingConfig).
	RecordSessions bool
	// AuditLog, if set, receives one JSON record per SSH session.
	AuditLog *slog.Logger
	// DefaultImage for new VPSs (default kohakuriver/vps:latest).
	DefaultImage     string
	HeartbeatTimeout time.Duration
	Logger           *slog.Logger
	// Gateway lets tests adjust the gateway's config.
	Gateway func(*gateway.Config)
}

// File names in DataDir.
const (
	StoreFile        = "state.db"
	AdminTokenFile   = "admin.token"
	ClusterTokenFile = "cluster.token"
	RecordingsDir    = "recordings"
)

// Host is the running control plane and gateway.
type Host struct {
	cfg   Config
	log   *slog.Logger
	store *embedded.DB
	gw    *gateway.Server
	api   *api.Server
	http  *http.Server
	admin *http.Server
	reg   *prometheus.Registry

	mu      sync.Mutex
	apiLn   net.Listener
	adminLn net.Listener
	cancel  context.CancelFunc
	bg      sync.WaitGroup
	// ClusterToken is the secret agents need; also in DataDir/cluster.token.
	ClusterToken string
	// HostKeys are the gateway's public host keys.
	HostKeys []gossh.PublicKey
}

// New opens the store and builds the gateway and API; nothing listens yet.
func New(cfg Config) (*Host, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = ".kohakuriver"
	}
	if cfg.APIAddr == "" {
		cfg.APIAddr = ":8000"
	}
	if cfg.SSHAddr == "" {
		cfg.SSHAddr = ":8002"
	}
	if cfg.PublicHost == "" {
		cfg.PublicHost = "localhost"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("host: data dir: %w", err)
	}
	db, err := embedded.Open(filepath.Join(cfg.DataDir, StoreFile), &embedded.Options{
		PortMin: cfg.PortMin, PortMax: cfg.PortMax, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	h := &Host{cfg: cfg, log: cfg.Logger, store: db}
	if err := h.build(); err != nil {
		db.Close()
		return nil, err
	}
	return h, nil
}

func (h *Host) build() error {
	ctx := context.Background()
	id, err := h.store.Identity(ctx, func() (store.Identity, error) {
		id, err := gateway.GenerateIdentity()
		if err != nil {
			return id, err
		}
		id.ClusterToken = api.NewToken()
		return id, nil
	})
	if err != nil {
		return fmt.Errorf("host: identity: %w", err)
	}
	hostSigners, userCA, err := gateway.Signers(id)
	if err != nil {
		return fmt.Errorf("host: identity: %w", err)
	}
	h.ClusterToken = id.ClusterToken
	if err := writeSecret(filepath.Join(h.cfg.DataDir, ClusterTokenFile), id.ClusterToken); err != nil {
		return err
	}
	created, err := api.EnsureAdminWithLogger(ctx, h.store, filepath.Join(h.cfg.DataDir, AdminTokenFile), h.log)
	if err != nil {
		return fmt.Errorf("host: admin user: %w", err)
	}
	if created {
		h.log.Info("admin token created", "path", filepath.Join(h.cfg.DataDir, AdminTokenFile))
	}

	var hostKeyLines []string
	for _, s := range hostSigners {
		h.HostKeys = append(h.HostKeys, s.PublicKey())
		hostKeyLines = append(hostKeyLines, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(s.PublicKey()))))
	}
	hopKeys, err := gateway.NewHopKeys(id.UserCA)
	if err != nil {
		return fmt.Errorf("host: identity: %w", err)
	}
	h.reg = newRegistry(h.store)
	metrics, err := gateway.NewMetrics(h.reg)
	if err != nil {
		return err
	}
	hop, err := newRelayHop(h.reg, id.ClusterToken, relay.BootID(), h.log.With("component", "hop"))
	if err != nil {
		return err
	}
	gcfg := gateway.Config{
		Metrics:     metrics,
		Audit:       h.cfg.AuditLog,
		Recording:   h.recording(),
		Addr:        h.cfg.SSHAddr,
		PortHost:    h.cfg.PortHost,
		HostSigners: hostSigners,
		UserCA:      userCA,
		HopKeys:     hopKeys,
		Directory:   h.store,
		Hop:         hop,
		Logger:      h.log.With("component", "gateway"),
		PublicHost:  h.cfg.PublicHost,
		PublicPort:  h.cfg.PublicSSHPort,
	}
	if h.cfg.Gateway != nil {
		h.cfg.Gateway(&gcfg)
	}
	if h.gw, err = gateway.New(gcfg); err != nil {
		return err
	}
	h.api, err = api.NewServer(api.Config{
		Store:             h.store,
		Agents:            control.NewClient(id.ClusterToken),
		ClusterToken:      id.ClusterToken,
		CertAuthorityLine: gateway.CertAuthorityLine(userCA.PublicKey()),
		HopKeyLine:        hopKeys.AuthorizedKeyLine,
		GatewayHostKeys:   hostKeyLines,
		PublicHost:        h.cfg.PublicHost,
		DefaultImage:      h.cfg.DefaultImage,
		Logger:            h.log.With("component", "api"),
		HeartbeatTimeout:  h.cfg.HeartbeatTimeout,
	})
	if err != nil {
		return err
	}
	return nil
}

func (h *Host) recording() gateway.RecordingConfig {
	if !h.cfg.RecordSessions {
		return gateway.RecordingConfig{}
	}
	return gateway.RecordingConfig{Dir: filepath.Join(h.cfg.DataDir, RecordingsDir)}
}

// writeSecret writes a token file readable only by its owner.
func writeSecret(path, secret string) error {
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("host: write %s: %w", path, err)
	}
	return os.Chmod(path, 0o600)
}

// Start binds the API and the gateway and starts the node monitor.
func (h *Host) Start() error {
	ln, err := net.Listen("tcp", h.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("host: listen on %s: %w", h.cfg.APIAddr, err)
	}
	if err := h.gw.Listen(); err != nil {
		ln.Close()
		return err
	}
	// What clients are told to dial: the public port, else the one bound
	// (also for ":0").
	h.api.SetGatewaySSHPort(h.gw.PublicPort())
	var adminLn net.Listener
	if h.cfg.AdminAddr != "" {
		if adminLn, err = net.Listen("tcp", h.cfg.AdminAddr); err != nil {
			ln.Close()
			h.gw.Close()
			return fmt.Errorf("host: listen on %s: %w", h.cfg.AdminAddr, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.mu.Lock()
	h.apiLn, h.adminLn, h.cancel = ln, adminLn, cancel
	h.mu.Unlock()
	if adminLn != nil {
		h.admin = &http.Server{Handler: h.adminHandler(h.reg), ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10}
		h.bg.Add(1)
		go func() {
			defer h.bg.Done()
			if err := h.admin.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				h.log.Error("admin server stopped", "err", err)
			}
		}()
		h.log.Info("admin endpoints listening", "addr", adminLn.Addr().String())
	}
	h.http = api.NewHTTPServer(h.cfg.APIAddr, h.api)
	h.bg.Add(2)
	go func() {
		defer h.bg.Done()
		if err := h.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("api server stopped", "err", err)
		}
	}()
	go func() { defer h.bg.Done(); h.api.RunNodeMonitor(ctx) }()
	h.log.Info("host api listening", "addr", ln.Addr().String())
	return nil
}

// APIAddr and SSHAddr report the bound addresses (after Start).
func (h *Host) APIAddr() net.Addr { h.mu.Lock(); defer h.mu.Unlock(); return h.apiLn.Addr() }

// AdminAddr is the admin listener's address, nil when disabled.
func (h *Host) AdminAddr() net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.adminLn == nil {
		return nil
	}
	return h.adminLn.Addr()
}

// SSHAddr is the gateway's main listener address.
func (h *Host) SSHAddr() net.Addr { return h.gw.Addr() }

// Reload applies new gateway limits without dropping sessions.
func (h *Host) Reload(l gateway.Limits) { h.gw.Reload(l) }

// Gateway exposes the SSH gateway (for tests and metrics).
func (h *Host) Gateway() *gateway.Server { return h.gw }

// Store exposes the store (for tests).
func (h *Host) Store() store.Store { return h.store }

// Close stops everything: sessions are cut.
func (h *Host) Close() error {
	return h.Shutdown(context.Background(), 0)
}

// Shutdown stops accepting, lets SSH sessions finish for up to drain, then
// closes what is left and the store.
func (h *Host) Shutdown(ctx context.Context, drain time.Duration) error {
	h.mu.Lock()
	cancel := h.cancel
	h.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	for _, srv := range []*http.Server{h.http, h.admin} {
		if srv != nil {
			sctx, c := context.WithTimeout(ctx, 5*time.Second)
			_ = srv.Shutdown(sctx)
			c()
		}
	}
	if drain > 0 {
		dctx, c := context.WithTimeout(ctx, drain)
		_ = h.gw.Shutdown(dctx)
		c()
	}
	err := h.gw.Close()
	h.bg.Wait()
	if cerr := h.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// relayHop dials VPS sshds through their node agents: by handoff when the
// agent runs on this machine (its socket is then the gateway's own, see
// package relay), else through the agent's TCP relay.
type relayHop struct {
	dialer *relay.Dialer
	bootID string // this kernel's; "" disables handoffs
	log    *slog.Logger
	// dials counts the sockets it got, by way ("handoff" or "relay"), and
	// fallbacks the handoffs it retried as relays: an operator's answer to
	// "does the gateway skip the relay on this machine?".
	dials     *prometheus.CounterVec
	fallbacks prometheus.Counter
	fellBack  sync.Map // node name + socket path of fallbacks logged at Info
}

func newRelayHop(reg prometheus.Registerer, token, bootID string, log *slog.Logger) (*relayHop, error) {
	r := &relayHop{
		dialer: &relay.Dialer{Token: token},
		bootID: bootID,
		log:    log,
		dials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kohakuriver", Subsystem: "gateway", Name: "hop_dials_total",
			Help: "Sockets to VPS sshds the gateway got, by way: handoff (from an agent on this machine) or relay (through an agent's TCP relay).",
		}, []string{"via"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kohakuriver", Subsystem: "gateway", Name: "handoff_fallbacks_total",
			Help: "Handoffs that failed before an agent answered for the VPS (socket missing, not permitted, another agent's) and were retried through the TCP relay.",
		}),
	}
	r.dials.WithLabelValues("handoff") // both series from the start, at 0
	r.dials.WithLabelValues("relay")
	for _, c := range []prometheus.Collector{r.dials, r.fallbacks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (r *relayHop) DialVPS(ctx context.Context, v store.VPS, node store.Node) (net.Conn, error) {
	if r.bootID != "" && node.RelaySocket != "" && node.BootID == r.bootID {
		c, err := r.dialer.DialLocal(ctx, node.RelaySocket, v.TaskID)
		if err == nil {
			r.dials.WithLabelValues("handoff").Inc()
			return c, nil
		}
		if !handoffFallsBack(ctx, err) {
			return nil, hopError(err)
		}
		r.fallbacks.Inc()
		// The socket is missing or closed to this user, or belongs to
		// another agent (a container on the same kernel): the TCP relay
		// is always right. Said once per node and socket at Info, since
		// it repeats for every login while the setup stays as it is.
		level := slog.LevelDebug
		if _, seen := r.fellBack.LoadOrStore(node.Name+"\x00"+node.RelaySocket, true); !seen {
			level = slog.LevelInfo
		}
		r.log.Log(ctx, level, "handoff failed, relaying over TCP", "node", node.Name, "socket", node.RelaySocket, "err", err)
	}
	c, err := r.dialer.Dial(ctx, node.Address, v.TaskID)
	if err != nil {
		return nil, hopError(err)
	}
	r.dials.WithLabelValues("relay").Inc()
	return c, nil
}

// handoffFallsBack reports whether a failed handoff should be retried as a
// TCP relay: when no agent answered (ErrAgentUnreachable), or another one
// than the VPS's did (ErrUnknownVPS, ErrUnauthorized). The VPS's agent's own
// answers (not running, sshd unreachable) stand, and so does a handoff that
// ran out of time: the agent is there but stuck, and a relay through it
// would wait as long again.
func handoffFallsBack(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	return errors.Is(err, relay.ErrAgentUnreachable) || errors.Is(err, relay.ErrUnknownVPS) || errors.Is(err, relay.ErrUnauthorized)
}

// hopError maps the relay's (non-nil) errors to the gateway's.
func hopError(err error) error {
	switch {
	case errors.Is(err, relay.ErrUnknownVPS), errors.Is(err, relay.ErrNotRunning):
		return fmt.Errorf("%w: %w", gateway.ErrVPSNotRunning, err)
	case errors.Is(err, relay.ErrUnreachable):
		return fmt.Errorf("%w: %w", gateway.ErrSSHDUnreachable, err)
	default:
		return fmt.Errorf("%w: %w", gateway.ErrNodeUnreachable, err)
	}
}
