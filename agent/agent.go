package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/agent/control"
	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/agent/relay"
	"github.com/kohakuriver/kohakuriver/gateway/api"
)

// Config configures an Agent.
type Config struct {
	// Name is the node name (unique in the cluster). Required.
	Name string
	// ListenAddr is where the control API and the relay listen
	// (default ":8001").
	ListenAddr string
	// AdvertiseAddr is the host:port the host and gateway dial; default
	// the listener's address. A wildcard listener needs it unless HostURL
	// is loopback (then the loopback address is advertised); see
	// advertiseAddr.
	AdvertiseAddr string
	// RelaySocket is the absolute path of a unix socket on which the agent
	// hands sockets to its VPSs' sshds over to a gateway on this machine
	// (see package relay, "Handoff"), so that the gateway's bytes skip the
	// relay. Empty: no handoff; the gateway relays over TCP. If the socket
	// cannot be set up the agent logs why and runs without it.
	RelaySocket string
	// HostURL is the host API's base URL (http://host:8000). Required.
	HostURL string
	// ClusterToken is the shared secret of host and agents. Required.
	ClusterToken string
	// Runtime runs the containers. Required.
	Runtime control.Runtime
	// HeartbeatInterval defaults to 5s.
	HeartbeatInterval time.Duration
	// Cores and MemoryMB are the capacity reported; default: this machine.
	Cores    int
	MemoryMB int64
	Logger   *slog.Logger
}

// Agent is a running node agent. New, then Listen, then Run; Close stops it.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	relay   *relay.Handler
	httpSrv *http.Server
	hostAPI *api.AgentAPI
	bootID  string

	// localSrv serves only the relay, on localLn (RelaySocket); localLn
	// is nil when there is no handoff socket, and localSrv then idle.
	localSrv *http.Server

	mu      sync.Mutex
	ln      net.Listener
	localLn net.Listener
}

// New validates cfg and builds the agent's handlers.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Name == "":
		return nil, errors.New("agent: node name is required (--name)")
	case cfg.HostURL == "":
		return nil, errors.New("agent: host URL is required (--host-url)")
	case cfg.ClusterToken == "":
		return nil, errors.New("agent: cluster token is required (the host writes it to <data dir>/cluster.token)")
	case cfg.Runtime == nil:
		return nil, errors.New("agent: no container runtime")
	}
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = ":8001"
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.Cores == 0 {
		cfg.Cores = runtime.NumCPU()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	verifier, err := clusterauth.NewVerifier(cfg.ClusterToken)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("node", cfg.Name)}
	a.relay, err = relay.NewHandler(verifier, relayTargets{cfg.Runtime}, a.log)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(relay.Pattern, a.relay)
	mux.Handle("/v1/", control.NewHandler(verifier, cfg.Runtime, cfg.Name, a.log))
	a.httpSrv = relay.NewHTTPServer(mux, a.log)
	a.localSrv = relay.NewHTTPServer(a.relay, a.log)
	a.bootID = relay.BootID()
	a.hostAPI = &api.AgentAPI{BaseURL: cfg.HostURL, ClusterToken: cfg.ClusterToken}
	return a, nil
}

// relayTargets maps the runtime's answers to the relay's sentinels.
type relayTargets struct{ rt control.Runtime }

// namespaceRuntime is a runtime that also reports each VPS's network
// namespace, as the Docker one does.
type namespaceRuntime interface {
	SSHTarget(ctx context.Context, taskID string) (docker.SSHTarget, error)
}

// The Docker runtime must stay one: relayTargets finds out by a type
// assertion, which would otherwise turn the namespace dial off in silence.
var _ namespaceRuntime = (*docker.Runtime)(nil)

func (t relayTargets) SSHAddr(ctx context.Context, taskID string) (string, error) {
	addr, err := t.rt.SSHAddr(ctx, taskID)
	return addr, relayError(err)
}

func (t relayTargets) SSHTarget(ctx context.Context, taskID string) (relay.Target, error) {
	nr, ok := t.rt.(namespaceRuntime)
	if !ok {
		addr, err := t.SSHAddr(ctx, taskID)
		return relay.Target{Addr: addr}, err
	}
	st, err := nr.SSHTarget(ctx, taskID)
	if err != nil {
		return relay.Target{}, relayError(err)
	}
	return relay.Target{Addr: st.Addr, Namespace: st.Namespace, NamespaceAddr: st.NamespaceAddr}, nil
}

func relayError(err error) error {
	switch {
	case errors.Is(err, docker.ErrNotFound):
		return fmt.Errorf("%w: %v", relay.ErrUnknownVPS, err)
	case errors.Is(err, docker.ErrNotRunning):
		return fmt.Errorf("%w: %v", relay.ErrNotRunning, err)
	}
	return err
}

// Listen binds the agent's listener.
func (a *Agent) Listen() error {
	ln, err := net.Listen("tcp", a.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("agent: listen on %s: %w", a.cfg.ListenAddr, err)
	}
	adv, err := advertiseAddr(a.cfg.AdvertiseAddr, a.cfg.HostURL, ln.Addr())
	if err != nil {
		ln.Close()
		return fmt.Errorf("agent: %w", err)
	}
	a.mu.Lock()
	a.ln = ln
	a.cfg.AdvertiseAddr = adv
	a.mu.Unlock()
	a.listenLocal()
	return nil
}

// listenLocal binds the handoff socket, if configured. Failing is not
// fatal: the gateway then relays over TCP, only slower.
func (a *Agent) listenLocal() {
	if a.cfg.RelaySocket == "" {
		return
	}
	ln, err := relay.ListenLocal(a.cfg.RelaySocket)
	if err != nil {
		a.log.Warn("no handoff socket: a gateway on this machine will relay over TCP", "err", err)
		return
	}
	a.mu.Lock()
	a.localLn = ln
	a.mu.Unlock()
}

// LocalSocket is the path of the handoff socket the agent serves, or ""
// (after Listen).
func (a *Agent) LocalSocket() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.localLn == nil {
		return ""
	}
	return a.cfg.RelaySocket
}

// advertiseAddr is the address the agent reports to the host, which the
// host and gateway dial: configured (--advertise) when set, else the
// listener's address. An address the host would resolve to its own
// machine is refused unless the host is on this machine too: a wildcard
// listener (":8001", "0.0.0.0", "::") with no --advertise, or a loopback
// address while the host URL is not loopback. When the host URL is
// loopback (single-machine setups such as kohakuriver up) a wildcard
// listener is advertised as the loopback address with its port.
func advertiseAddr(configured, hostURL string, listen net.Addr) (string, error) {
	hostIP, hostLoopback := loopbackHost(hostURL)
	if configured != "" {
		h, _, err := net.SplitHostPort(configured)
		if err != nil {
			return "", fmt.Errorf("advertise address %q: want host:port (--advertise or KOHAKURIVER_AGENT_ADVERTISE): %w", configured, err)
		}
		if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
			return "", fmt.Errorf("advertise address %q is not an address the host can dial: "+
				"set --advertise (or KOHAKURIVER_AGENT_ADVERTISE) to this node's host:port as the host reaches it, e.g. --advertise 10.0.0.5:8001", configured)
		}
		if isLoopbackHost(h) && !hostLoopback {
			return "", fmt.Errorf("advertise address %q is a loopback address but the host (%s) is on another machine, which would dial itself: "+
				"set --advertise (or KOHAKURIVER_AGENT_ADVERTISE) to this node's host:port as the host reaches it, e.g. --advertise 10.0.0.5:8001", configured, hostURL)
		}
		return configured, nil
	}
	tcp, ok := listen.(*net.TCPAddr)
	if !ok {
		return listen.String(), nil
	}
	switch {
	case tcp.IP == nil || tcp.IP.IsUnspecified():
		if !hostLoopback {
			return "", fmt.Errorf("listening on %s (every interface) with no advertise address: the host (%s) would dial its own machine; "+
				"set --advertise (or KOHAKURIVER_AGENT_ADVERTISE) to this node's host:port as the host reaches it, e.g. --advertise 10.0.0.5:%d", listen, hostURL, tcp.Port)
		}
		ip := net.IPv4(127, 0, 0, 1)
		if tcp.IP.To4() == nil && hostIP != nil && hostIP.To4() == nil {
			ip = net.IPv6loopback // an IPv6 wildcard and a host URL on ::1
		}
		return net.JoinHostPort(ip.String(), strconv.Itoa(tcp.Port)), nil
	case tcp.IP.IsLoopback() && !hostLoopback:
		return "", fmt.Errorf("listening on the loopback address %s with no advertise address, but the host (%s) is on another machine and cannot reach it; "+
			"listen on a reachable address and set --advertise (or KOHAKURIVER_AGENT_ADVERTISE) to this node's host:port as the host reaches it", listen, hostURL)
	}
	return listen.String(), nil
}

// loopbackHost reports whether rawURL's host is a loopback address
// ("localhost" or a loopback IP literal; names are not resolved) and
// returns the IP when it is a literal.
func loopbackHost(rawURL string) (net.IP, bool) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, false
	}
	h := u.Hostname()
	return net.ParseIP(h), isLoopbackHost(h)
}

func isLoopbackHost(h string) bool {
	if ip := net.ParseIP(h); ip != nil {
		return ip.IsLoopback()
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	return h == "localhost" || strings.HasSuffix(h, ".localhost")
}

// Addr is the listener's address (after Listen).
func (a *Agent) Addr() net.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ln == nil {
		return nil
	}
	return a.ln.Addr()
}

// Run serves and reports to the host until ctx is done, then shuts down.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	ln := a.ln
	a.mu.Unlock()
	if ln == nil {
		if err := a.Listen(); err != nil {
			return err
		}
		ln = a.ln
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.httpSrv.Serve(ln) }()
	a.log.Info("agent listening", "addr", ln.Addr().String(), "advertise", a.cfg.AdvertiseAddr)
	localDone := make(chan struct{})
	defer func() { <-localDone }()
	a.mu.Lock()
	localLn := a.localLn
	a.mu.Unlock()
	if localLn == nil {
		close(localDone)
	} else {
		a.log.Info("handing VPS sockets over on the local socket", "path", a.cfg.RelaySocket)
		go func() {
			defer close(localDone)
			// Losing the socket costs speed, not service: log and go on.
			if err := a.localSrv.Serve(localLn); !errors.Is(err, http.ErrServerClosed) {
				a.log.Warn("handoff socket failed: a gateway on this machine will relay over TCP", "err", err)
				a.mu.Lock()
				a.localLn = nil // stop reporting it
				a.mu.Unlock()
				localLn.Close()
			}
		}()
	}

	reportDone := make(chan struct{})
	go func() { defer close(reportDone); a.reportLoop(ctx) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	a.Close()
	<-reportDone
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close stops serving and ends every relay.
func (a *Agent) Close() error {
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := a.httpSrv.Shutdown(shutdownCtx)
	if lerr := a.localSrv.Shutdown(shutdownCtx); err == nil {
		err = lerr
	}
	a.mu.Lock()
	if a.localLn != nil {
		a.localLn.Close() // removes the socket file, also when never served
	}
	a.mu.Unlock()
	if rerr := a.relay.Close(); err == nil {
		err = rerr
	}
	return err
}

// reportLoop registers, then heartbeats; failures back off and retry, and
// a heartbeat the host refuses (it forgot the node) registers again.
func (a *Agent) reportLoop(ctx context.Context) {
	registered := false
	backoff := time.Second
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		report, err := a.report(ctx)
		if err == nil {
			if registered {
				err = a.hostAPI.Heartbeat(ctx, report)
			} else {
				err = a.hostAPI.Register(ctx, report)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("cannot report to host", "registered", registered, "err", err)
			registered = false
			t.Reset(backoff)
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		if !registered {
			a.log.Info("registered with host", "host", a.cfg.HostURL, "vps", len(report.VPS))
		}
		registered = true
		backoff = time.Second
		t.Reset(a.cfg.HeartbeatInterval)
	}
}

func (a *Agent) report(ctx context.Context) (api.AgentReport, error) {
	lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	infos, err := a.cfg.Runtime.List(lctx)
	if err != nil {
		return api.AgentReport{}, fmt.Errorf("list containers: %w", err)
	}
	r := api.AgentReport{Name: a.cfg.Name, Address: a.cfg.AdvertiseAddr, Cores: a.cfg.Cores, MemoryMB: a.cfg.MemoryMB}
	if path := a.LocalSocket(); path != "" && a.bootID != "" {
		r.RelaySocket, r.BootID = path, a.bootID
	}
	for _, info := range infos {
		r.VPS = append(r.VPS, control.State(info))
	}
	return r, nil
}
