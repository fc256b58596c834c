package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kohakuriver/kohakuriver/agent"
	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/agent/relay"
	"github.com/kohakuriver/kohakuriver/gateway/host"
)

// LogFlags select the daemons' log output.
type LogFlags struct {
	LogLevel  string `name:"log-level" default:"info" enum:"debug,info,warn,error" help:"Log level (${enum})."`
	LogFormat string `name:"log-format" default:"json" enum:"json,text" help:"Log format (${enum})."`

	// level can change at run time (host --config and SIGHUP).
	level slog.LevelVar
}

func (f *LogFlags) logger() *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(f.LogLevel))
	f.level.Set(lvl)
	opts := &slog.HandlerOptions{Level: &f.level}
	if f.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

// signalContext is cancelled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// HostFlags configure the host daemon.
type HostFlags struct {
	DataDir    string        `name:"data-dir" default:".kohakuriver" env:"KOHAKURIVER_DATA_DIR" help:"Directory for the state database and token files."`
	APIAddr    string        `name:"api-addr" default:":8000" env:"HOST_API_ADDR" help:"HTTP API listen address."`
	SSHAddr    string        `name:"ssh-addr" default:":8002" env:"HOST_SSH_PROXY_ADDR" help:"SSH gateway listen address."`
	SSHPort    int           `name:"gateway-port" env:"HOST_SSH_PROXY_PORT" help:"SSH gateway port: replaces the port of --ssh-addr."`
	PublicPort int           `name:"public-gateway-port" env:"KOHAKURIVER_PUBLIC_SSH_PORT" help:"The gateway port users connect to, when a NAT or port mapping puts it elsewhere than the port bound (reported to CLIs, shown in hints)."`
	PortHost   string        `name:"vps-port-host" default:"" help:"Bind address of the per-VPS SSH ports (default: all interfaces)."`
	PortMin    int           `name:"vps-port-min" default:"9000" help:"First per-VPS SSH port."`
	PortMax    int           `name:"vps-port-max" default:"9999" help:"Last per-VPS SSH port."`
	PublicHost string        `name:"public-host" default:"localhost" env:"KOHAKURIVER_PUBLIC_HOST" help:"Host name users connect to, shown in hints."`
	Image      string        `name:"default-image" default:"kohakuriver/vps:latest" help:"Image for new VPSs."`
	Drain      time.Duration `name:"drain" default:"30s" help:"On SIGTERM, how long SSH sessions may continue before they are closed."`
	AdminAddr  string        `name:"admin-addr" default:"127.0.0.1:9100" help:"Listen address of /metrics, /healthz and /readyz (no authentication: keep it private); empty disables."`
	Record     bool          `name:"record-sessions" help:"Record terminal sessions as asciicast files under <data-dir>/recordings."`
	Config     string        `name:"config" type:"existingfile" help:"JSON file of settings reloaded on SIGHUP without dropping sessions: log_level, max_channels, max_forwards, throttle {max_failures, window, ban, allow}."`
	AuditLog   string        `name:"audit-log" default:"" help:"File for the JSON audit log, one record per SSH session (default <data-dir>/audit.log; '-' for stderr)."`
}

func (f HostFlags) config(log *slog.Logger) (host.Config, func(), error) {
	sshAddr, err := f.sshAddr()
	if err != nil {
		return host.Config{}, nil, err
	}
	if f.PublicPort < 0 || f.PublicPort > 65535 {
		return host.Config{}, nil, fmt.Errorf("--public-gateway-port (KOHAKURIVER_PUBLIC_SSH_PORT) %d: give a port from 1 to 65535, or 0 for the port bound", f.PublicPort)
	}
	audit, closeAudit, err := openAuditLog(f.AuditLog, f.DataDir)
	if err != nil {
		return host.Config{}, nil, err
	}
	return host.Config{
		DataDir: f.DataDir, APIAddr: f.APIAddr, SSHAddr: sshAddr, PortHost: f.PortHost, PublicSSHPort: f.PublicPort,
		PortMin: f.PortMin, PortMax: f.PortMax, PublicHost: f.PublicHost, DefaultImage: f.Image, Logger: log,
		AdminAddr: f.AdminAddr, AuditLog: audit, RecordSessions: f.Record,
	}, closeAudit, nil
}

// sshAddr is --ssh-addr with the port of --gateway-port (HOST_SSH_PROXY_PORT),
// when that is set.
func (f HostFlags) sshAddr() (string, error) {
	if f.SSHPort == 0 {
		return f.SSHAddr, nil
	}
	if f.SSHPort < 1 || f.SSHPort > 65535 {
		return "", fmt.Errorf("--gateway-port (HOST_SSH_PROXY_PORT) %d: give a port from 1 to 65535", f.SSHPort)
	}
	h, _, err := net.SplitHostPort(f.SSHAddr)
	if err != nil {
		return "", fmt.Errorf("--ssh-addr (HOST_SSH_PROXY_ADDR) %q: %v; give HOST:PORT or :PORT", f.SSHAddr, err)
	}
	return net.JoinHostPort(h, strconv.Itoa(f.SSHPort)), nil
}

// openAuditLog opens the audit log for appending (0600: it names users and
// their keys' fingerprints).
func openAuditLog(path, dataDir string) (*slog.Logger, func(), error) {
	if path == "-" {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil)), func() {}, nil
	}
	if path == "" {
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return nil, nil, err
		}
		path = filepath.Join(dataDir, "audit.log")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open audit log: %w", err)
	}
	return slog.New(slog.NewJSONHandler(f, nil)), func() { f.Close() }, nil
}

// prepareHostRuntime sets up the Go runtime for a process that runs the
// host: first the GODEBUG it wants, then GOGC (host.TuneRuntime).
func prepareHostRuntime(env *Env) {
	reexecForHost(env)
	host.TuneRuntime()
}

// reexecForHost re-executes the process with the GODEBUG the host wants
// (host.GODEBUGForHost) and does not return, unless no re-execution is
// needed or possible. If the process cannot re-execute itself it says so
// and runs on with the runtime's default, which only costs CPU.
func reexecForHost(env *Env) {
	if env.Reexec == nil {
		return
	}
	godebug, change := host.GODEBUGForHost(env.Getenv("GODEBUG"))
	if !change {
		return
	}
	err := env.Reexec(host.WithGODEBUG(os.Environ(), godebug))
	fmt.Fprintf(env.Stderr, "kohakuriver: warning: could not restart with GODEBUG=%s (%v); running on with Go's default, which costs the gateway more CPU per GiB relayed\n", godebug, err)
}

// HostCmd runs the control plane and the SSH gateway.
type HostCmd struct {
	HostFlags
	LogFlags
}

// Run starts the host and blocks until SIGINT/SIGTERM.
func (c *HostCmd) Run(env *Env) error {
	prepareHostRuntime(env)
	log := c.logger()
	cfg, closeAudit, err := c.config(log)
	if err != nil {
		return err
	}
	defer closeAudit()
	h, err := host.New(cfg)
	if err != nil {
		return err
	}
	if err := h.Start(); err != nil {
		h.Close()
		return err
	}
	fmt.Fprintf(os.Stderr, "kohakuriver host: API on %s, SSH gateway on %s; agents need the token in %s/%s\n",
		h.APIAddr(), h.SSHAddr(), c.DataDir, host.ClusterTokenFile)
	reload := func() {
		if c.Config == "" {
			log.Info("SIGHUP: no --config file to reload")
			return
		}
		limits, lvl, err := loadHostConfig(c.Config)
		if err != nil {
			log.Error("config not reloaded; keeping the previous settings", "err", err)
			return
		}
		if lvl != nil {
			c.level.Set(*lvl)
		}
		h.Reload(limits)
		log.Info("config reloaded", "path", c.Config)
	}
	if c.Config != "" {
		if _, _, err := loadHostConfig(c.Config); err != nil {
			h.Close()
			return err
		}
		reload()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, stop := signalContext()
	defer stop()
	for ctx.Err() == nil {
		select {
		case <-hup:
			reload()
		case <-ctx.Done():
		}
	}
	log.Info("shutting down", "drain", c.Drain.String())
	return h.Shutdown(context.Background(), c.Drain)
}

// AgentFlags configure a node agent.
type AgentFlags struct {
	Name             string `name:"name" env:"KOHAKURIVER_NODE_NAME" help:"Node name (default: this machine's host name)."`
	Listen           string `name:"listen" default:":8001" env:"KOHAKURIVER_AGENT_ADDR" help:"Agent listen address (relay and control API)."`
	Advertise        string `name:"advertise" env:"KOHAKURIVER_AGENT_ADVERTISE" help:"host:port the host uses to reach this agent (default: the listen address; needed when listening on every interface, unless the host URL is loopback)."`
	HostURL          string `name:"host-url" default:"http://127.0.0.1:8000" env:"KOHAKURIVER_HOST_URL" help:"The host API's base URL."`
	ClusterToken     string `name:"cluster-token" env:"KOHAKURIVER_CLUSTER_TOKEN" help:"Cluster token (prefer --cluster-token-file)."`
	ClusterTokenFile string `name:"cluster-token-file" default:".kohakuriver/cluster.token" help:"File holding the cluster token (written by the host)."`
	RelaySocket      string `name:"relay-socket" env:"KOHAKURIVER_RELAY_SOCKET" help:"Unix socket on which the agent hands VPS connections to a host on this machine, so that their bytes skip the relay (default: kohakuriver/relay-<name>.sock in $XDG_RUNTIME_DIR, /run as root, else /tmp/kohakuriver-<uid>; 'off' to relay everything over TCP)."`
}

// relaySocket is the handoff socket path the flags select, "" for none.
func (f AgentFlags) relaySocket(node string) string {
	switch f.RelaySocket {
	case "off":
		return ""
	case "":
		return defaultRelaySocket(node)
	}
	if abs, err := filepath.Abs(f.RelaySocket); err == nil {
		return abs
	}
	return f.RelaySocket
}

// defaultRelaySocket is the handoff socket of node: in the user's runtime
// directory, which only that user can enter (the agent checks the
// directory's owner and mode before it listens there).
func defaultRelaySocket(node string) string {
	var dir string
	switch {
	case os.Getenv("XDG_RUNTIME_DIR") != "":
		dir = filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "kohakuriver")
	case os.Geteuid() == 0:
		dir = "/run/kohakuriver"
	default:
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("kohakuriver-%d", os.Geteuid()))
	}
	safe := []byte(node)
	for i, b := range safe {
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-' || b == '_' || b == '.') {
			safe[i] = '_'
		}
	}
	name := "relay-" + string(safe)
	// Unix socket paths are short; a long node name is cut (the socket is
	// per machine, and two agents on one machine differ early in theirs).
	if room := relay.MaxSocketPath - len(dir) - len("/.sock"); len(name) > room && room > len("relay-") {
		name = name[:room]
	}
	return filepath.Join(dir, name+".sock")
}

func (f AgentFlags) token() (string, error) {
	if f.ClusterToken != "" {
		return f.ClusterToken, nil
	}
	b, err := os.ReadFile(f.ClusterTokenFile)
	if err != nil {
		return "", fmt.Errorf("read cluster token: %w (copy <host data dir>/cluster.token here or pass --cluster-token-file)", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (f AgentFlags) build(log *slog.Logger) (*agent.Agent, *docker.Runtime, error) {
	name := f.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	token, err := f.token()
	if err != nil {
		return nil, nil, err
	}
	rt, err := docker.New(docker.Options{NodeName: name, Logger: log})
	if err != nil {
		return nil, nil, fmt.Errorf("%w (the agent runs VPSs with Docker: start dockerd)", err)
	}
	a, err := agent.New(agent.Config{
		Name: name, ListenAddr: f.Listen, AdvertiseAddr: f.Advertise, HostURL: f.HostURL,
		ClusterToken: token, Runtime: rt, Logger: log, RelaySocket: f.relaySocket(name),
	})
	if err != nil {
		rt.Close()
		return nil, nil, err
	}
	return a, rt, nil
}

// AgentCmd runs a node agent.
type AgentCmd struct {
	AgentFlags
	LogFlags
}

// Run starts the agent and blocks until SIGINT/SIGTERM.
func (c *AgentCmd) Run() error {
	log := c.logger()
	a, rt, err := c.build(log)
	if err != nil {
		return err
	}
	defer rt.Close()
	ctx, stop := signalContext()
	defer stop()
	return a.Run(ctx)
}
