package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// Directory is what the gateway reads of the cluster's state. store.Store
// satisfies it. Reads happen at login time, so changes (keys, status, ports)
// take effect for the next login at once.
type Directory interface {
	VPS(ctx context.Context, ref string) (store.VPS, error)
	VPSByPort(ctx context.Context, port int) (store.VPS, error)
	VPSByKey(ctx context.Context, fingerprint string) ([]store.VPS, error)
	ListVPS(ctx context.Context) ([]store.VPS, error)
	Node(ctx context.Context, name string) (store.Node, error)
	Watch(ctx context.Context) <-chan store.Event
}

var _ Directory = store.Store(nil)

// Hop opens the byte stream to a VPS's sshd (normally through the node's
// agent relay). Errors should wrap ErrNodeUnreachable, ErrVPSNotRunning or
// ErrSSHDUnreachable so users get a precise message.
type Hop interface {
	DialVPS(ctx context.Context, vps store.VPS, node store.Node) (net.Conn, error)
}

// Config configures a Server. Zero values mean the documented defaults.
type Config struct {
	// Addr is the main listener (username and key routing). Default ":8002".
	Addr string
	// PortHost is the address the per-VPS port listeners bind to ("" = all
	// interfaces, as Addr's host by default).
	PortHost string
	// DisablePortListeners turns off port routing.
	DisablePortListeners bool
	// HostSigners are the gateway's host keys. Required.
	HostSigners []gossh.Signer
	// UserCA signs the short-lived certificates for the hop. Required.
	UserCA gossh.Signer
	// HopKeys, if set, gives each VPS a plain hop key tried after the
	// certificate, for sshds without certificate support (Dropbear). The
	// VPS must have HopKeys.AuthorizedKeyLine in its authorized_keys.
	HopKeys *HopKeys
	// Directory and Hop are required.
	Directory Directory
	Hop       Hop
	Logger    *slog.Logger

	// LoginGraceTime closes connections that have not authenticated in
	// time, like sshd's option. Default 30s.
	LoginGraceTime time.Duration
	// MaxAuthTries, like sshd's. Default 6.
	MaxAuthTries int
	// HopTimeout bounds dialing and authenticating the hop. Default 20s.
	HopTimeout time.Duration
	// CertTTL is the validity of hop certificates. Default 5m.
	CertTTL time.Duration
	// MaxChannels bounds concurrent channels per connection (both
	// directions). Default 256.
	MaxChannels int
	// MaxForwards bounds remote forwards (tcpip-forward and
	// streamlocal-forward) per connection. Default 64.
	MaxForwards int
	// MaxConns bounds concurrent connections on all listeners. Default 10000.
	MaxConns int
	// Ciphers offered to clients; default: chosen per client, see
	// ciphersFor.
	Ciphers []string
	// PublicHost is the host name shown in user-facing hints
	// ("ssh <task>@HOST -p 8002"). Default "HOST".
	PublicHost string
	// PublicPort is the main port users connect to, when it is not the
	// one the gateway binds (a NAT or a container's port mapping); 0
	// means the bound port.
	PublicPort int
	// Throttle bans sources that keep failing to log in.
	Throttle ThrottleConfig
	// Metrics, if set, receives the gateway's Prometheus metrics.
	Metrics *Metrics
	// Recording records terminal sessions (off unless Dir is set).
	Recording RecordingConfig
	// Audit, if set, receives one record per authenticated connection
	// (who, which VPS, route, times, bytes, exits, forwards).
	Audit *slog.Logger
}

func (cfg *Config) setDefaults() error {
	if cfg.Addr == "" {
		cfg.Addr = ":8002"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.LoginGraceTime <= 0 {
		cfg.LoginGraceTime = 30 * time.Second
	}
	if cfg.MaxAuthTries <= 0 {
		cfg.MaxAuthTries = 6
	}
	if cfg.HopTimeout <= 0 {
		cfg.HopTimeout = 20 * time.Second
	}
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = 5 * time.Minute
	}
	if cfg.MaxChannels <= 0 {
		cfg.MaxChannels = 256
	}
	if cfg.MaxForwards <= 0 {
		cfg.MaxForwards = 64
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 10000
	}
	if cfg.PublicHost == "" {
		cfg.PublicHost = "HOST"
	}
	switch {
	case len(cfg.HostSigners) == 0:
		return errors.New("gateway: no host keys configured")
	case cfg.UserCA == nil:
		return errors.New("gateway: no user CA configured")
	case cfg.Directory == nil:
		return errors.New("gateway: no directory configured")
	case cfg.Hop == nil:
		return errors.New("gateway: no hop configured")
	}
	return nil
}

// Server is the SSH gateway. Create it with New, start it with Listen, stop
// it with Close or Shutdown.
type Server struct {
	cfg   Config
	log   *slog.Logger
	glide *gliderssh.Server

	// ctx is cancelled by Close; background work (the port reconciler)
	// derives from it.
	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup // background goroutines: accept loops, reconciler

	// connSlots bounds concurrent connections (MaxConns).
	connSlots chan struct{}
	throttle  *throttle
	metrics   *Metrics
	// live holds the settings Reload may change; read with limits().
	live atomic.Pointer[Limits]

	// mu guards the fields below. Lock order: mu before any conn's mu.
	mu        sync.Mutex
	closed    bool
	main      net.Listener
	ports     map[int]*portListener // by VPS SSH port
	conns     map[*conn]struct{}    // live connections
	mainPort  int
	reconcile chan struct{} // poke the port reconciler
}

// New validates cfg and returns a Server that is not yet listening.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		ctx:       ctx,
		cancel:    cancel,
		connSlots: make(chan struct{}, cfg.MaxConns),
		ports:     map[int]*portListener{},
		conns:     map[*conn]struct{}{},
		reconcile: make(chan struct{}, 1),
		throttle:  newThrottle(cfg.Throttle),
		metrics:   cfg.Metrics,
	}
	s.live.Store(&Limits{MaxChannels: cfg.MaxChannels, MaxForwards: cfg.MaxForwards, Throttle: cfg.Throttle})
	hostSigners := make([]gliderssh.Signer, 0, len(cfg.HostSigners))
	for _, hs := range cfg.HostSigners {
		hostSigners = append(hostSigners, hs)
	}
	s.glide = &gliderssh.Server{
		HostSigners:          hostSigners,
		Version:              serverVersion,
		ConnCallback:         s.onConnect,
		ServerConfigCallback: s.serverConfig,
		PublicKeyHandler:     s.mayAuthenticate,
		// Only for VPSs made without a key; see interactive.go.
		KeyboardInteractiveHandler: s.keyboardInteractive,
		// Only the generic relay: no gliderlabs session, forwarding or
		// agent handling, which would act on the gateway host.
		ChannelHandlers:          map[string]gliderssh.ChannelHandler{"default": s.handleChannel},
		RequestHandlers:          map[string]gliderssh.RequestHandler{"default": s.handleGlobalRequest},
		SubsystemHandlers:        map[string]gliderssh.SubsystemHandler{},
		ConnectionFailedCallback: s.onHandshakeFailed,
	}
	return s, nil
}

// Limits are the settings that can change while the gateway runs (the host
// reloads them on SIGHUP). Zero values take the defaults of Config.
type Limits struct {
	MaxChannels int
	MaxForwards int
	Throttle    ThrottleConfig
}

// Reload applies new limits. Connections and sessions stay up; a lower
// channel or forward limit applies to the next open.
func (s *Server) Reload(l Limits) {
	if l.MaxChannels <= 0 {
		l.MaxChannels = 256
	}
	if l.MaxForwards <= 0 {
		l.MaxForwards = 64
	}
	s.live.Store(&l)
	s.throttle.setConfig(l.Throttle)
	s.log.Info("limits reloaded", "max_channels", l.MaxChannels, "max_forwards", l.MaxForwards,
		"throttle_max_failures", l.Throttle.MaxFailures)
}

func (s *Server) limits() *Limits { return s.live.Load() }

// Listen binds the main port, opens the per-VPS port listeners and starts
// serving in the background.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("gateway: listen on %s: %w", s.cfg.Addr, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return errors.New("gateway: server closed")
	}
	s.main = ln
	s.mainPort = ln.Addr().(*net.TCPAddr).Port
	s.mu.Unlock()
	s.serve(ln, listenerInfo{})
	s.log.Info("ssh gateway listening", "addr", ln.Addr().String())
	if !s.cfg.DisablePortListeners {
		if err := s.startPortReconciler(); err != nil {
			return err
		}
	}
	return nil
}

// Addr returns the main listener's address (after Listen).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.main == nil {
		return nil
	}
	return s.main.Addr()
}

// listenerInfo tags connections with the listener they came from.
type listenerInfo struct {
	// vpsPort is the VPS SSH port for port routing, 0 on the main port.
	vpsPort int
}

// taggedListener wraps accepted conns so onConnect knows their listener.
type taggedListener struct {
	net.Listener
	info listenerInfo
}

type taggedConn struct {
	net.Conn
	info listenerInfo
}

func (l taggedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return taggedConn{Conn: c, info: l.info}, nil
}

func (s *Server) serve(ln net.Listener, info listenerInfo) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		err := s.glide.Serve(taggedListener{Listener: ln, info: info})
		if err != nil && !errors.Is(err, gliderssh.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("ssh listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// Close stops all listeners and closes every connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	var lns []net.Listener
	if s.main != nil {
		lns = append(lns, s.main)
	}
	for _, pl := range s.ports {
		lns = append(lns, pl.ln)
	}
	s.ports = map[int]*portListener{}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	for _, ln := range lns {
		ln.Close()
	}
	for _, c := range conns {
		c.close(errors.New("gateway shutting down"))
	}
	err := s.glide.Close()
	s.bg.Wait()
	return err
}

// Shutdown stops accepting, waits for connections to end until ctx is done,
// then closes the rest.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	lns := []net.Listener{}
	if s.main != nil {
		lns = append(lns, s.main)
	}
	for _, pl := range s.ports {
		lns = append(lns, pl.ln)
	}
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			return s.Close()
		}
		select {
		case <-ctx.Done():
			s.mu.Lock()
			conns := make([]*conn, 0, len(s.conns))
			for c := range s.conns {
				conns = append(conns, c)
			}
			s.mu.Unlock()
			tellAll(conns, "the gateway is shutting down; reconnect in a moment")
			s.Close()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// shutdownNoticeTime bounds how long Shutdown waits for its notice to reach
// the sessions it is about to cut.
const shutdownNoticeTime = time.Second

// tellAll writes msg to every session of conns, all at once, and returns
// when they are written or after shutdownNoticeTime. A write waits for the
// client's window, which a client that stopped reading (a suspended ssh)
// never opens; closing the conns afterwards ends such writes.
func tellAll(conns []*conn, msg string) {
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.tellSessions(msg) })
	}
	told := make(chan struct{})
	go func() { wg.Wait(); close(told) }()
	t := time.NewTimer(shutdownNoticeTime)
	defer t.Stop()
	select {
	case <-told:
	case <-t.C:
	}
}

// ActiveConns reports the number of live downstream connections.
func (s *Server) ActiveConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) trackConn(c *conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closed {
			return false
		}
		s.conns[c] = struct{}{}
		return true
	}
	delete(s.conns, c)
	return true
}

// PublicPort is the main port users connect to: Config.PublicPort, else
// the one bound (0 before Listen).
func (s *Server) PublicPort() int {
	if s.cfg.PublicPort > 0 {
		return s.cfg.PublicPort
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mainPort
}

// hint is the routing example shown in refusals.
func (s *Server) hint() string {
	return "ssh <task>@" + s.cfg.PublicHost + " -p " + strconv.Itoa(s.PublicPort())
}
