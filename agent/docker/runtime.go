package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// Defaults for Options and Spec.
const (
	DefaultImage        = "kohakuriver/vps:latest"
	DefaultLabelPrefix  = "io.kohakuriver"
	DefaultLoginUser    = "root" // same as store.DefaultLoginUser
	DefaultStopTimeout  = 10 * time.Second
	DefaultReadyTimeout = 30 * time.Second

	// NamePrefix starts every VPS container's name; the task id follows.
	NamePrefix = "kohakuriver-vps-"
)

var (
	// sshPort is the port sshd listens on inside every VPS.
	sshPort = network.MustParsePort("22/tcp")
	// loopback is where VPS ports are published.
	loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})
)

// Options configure a Runtime. Zero fields take the defaults above.
type Options struct {
	// Logger receives operational logs. nil discards them.
	Logger *slog.Logger
	// NodeName is written into every container's node label; List and
	// lookups ignore containers of other nodes sharing the engine.
	// Required.
	NodeName string
	// LabelPrefix prefixes the label keys (default "io.kohakuriver").
	LabelPrefix string
	// StopTimeout is how long Stop and Restart wait for sshd to exit after
	// SIGTERM before Docker kills the container.
	StopTimeout time.Duration
	// ReadyTimeout bounds how long Create, Start and Restart wait for the
	// sshd banner.
	ReadyTimeout time.Duration
	// ClientOpts replace the engine client's options (default
	// client.FromEnv: DOCKER_HOST, DOCKER_API_VERSION, TLS variables).
	ClientOpts []client.Opt
}

// Runtime runs the VPS containers of one node. Create it with New; it is
// safe for concurrent use. Call Close when done.
type Runtime struct {
	cli    *client.Client
	log    *slog.Logger
	node   string
	prefix string

	stopTimeout  time.Duration
	readyTimeout time.Duration

	keys         hostKeyCache
	networkReach atomic.Int32                                 // reachUnknown, reachYes or reachNo: see addr.go
	reachNoAt    atomic.Int64                                 // when reachNo was decided (Unix ns)
	probe        func(ctx context.Context, addr string) error // readBanner; tests replace it
}

// State is Docker's state of a container: "created", "running", "paused",
// "restarting", "removing", "exited" or "dead".
type State string

// StateRunning is the only state in which a VPS's sshd can answer.
const StateRunning State = "running"

// Info describes one VPS container. It is a snapshot owned by the caller.
type Info struct {
	TaskID      string
	ContainerID string
	Image       string
	State       State
	// SSHAddr is where the relay dials the VPS's sshd (see SSHAddr), or
	// "" when the container is not running. It may change when the
	// container restarts.
	SSHAddr string
	// HostKeys are the sshd's public host keys in authorized_keys format
	// ("ssh-ed25519 AAAA..."), ed25519 first. Keys the VPS's root made
	// unusable are left out (see hostKeysOf), so it may be empty.
	HostKeys []string
	// Labels are all of the container's labels.
	Labels map[string]string
}

// New connects to the Docker engine and checks that it answers (with a 10 s
// bound). The error wraps ErrUnreachable when it does not.
func New(opts Options) (*Runtime, error) {
	if opts.NodeName == "" {
		return nil, errors.New("docker runtime: NodeName is required")
	}
	rt := &Runtime{
		log:          opts.Logger,
		node:         opts.NodeName,
		prefix:       opts.LabelPrefix,
		stopTimeout:  opts.StopTimeout,
		readyTimeout: opts.ReadyTimeout,
	}
	if rt.log == nil {
		rt.log = slog.New(slog.DiscardHandler)
	}
	if rt.prefix == "" {
		rt.prefix = DefaultLabelPrefix
	}
	if rt.stopTimeout <= 0 {
		rt.stopTimeout = DefaultStopTimeout
	}
	if rt.readyTimeout <= 0 {
		rt.readyTimeout = DefaultReadyTimeout
	}
	copts := opts.ClientOpts
	if copts == nil {
		copts = []client.Opt{client.FromEnv}
	}
	cli, err := client.New(copts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ping, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	if err != nil {
		host := cli.DaemonHost()
		cli.Close()
		return nil, fmt.Errorf("%w at %s: is dockerd running? (%v)", ErrUnreachable, host, err)
	}
	rt.cli = cli
	rt.log.Debug("docker engine reachable", "host", cli.DaemonHost(), "api_version", ping.APIVersion)
	return rt, nil
}

// Close releases the engine client's connections. Containers keep running.
func (rt *Runtime) Close() error { return rt.cli.Close() }

// Label keys.
func (rt *Runtime) labelManaged() string { return rt.prefix + ".managed" }
func (rt *Runtime) labelTask() string    { return rt.prefix + ".task" }
func (rt *Runtime) labelNode() string    { return rt.prefix + ".node" }

// taskIDPattern keeps task ids usable in container names (Docker allows
// [a-zA-Z0-9][a-zA-Z0-9_.-]*) and free of path or filter syntax.
var taskIDPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)

// ContainerName returns the name of the task's container.
func ContainerName(taskID string) string { return NamePrefix + taskID }

func checkTaskID(taskID string) error {
	if !taskIDPattern.MatchString(taskID) {
		return fmt.Errorf("invalid task id %q", taskID)
	}
	return nil
}

// inspect returns the task's container, or an error wrapping ErrNotFound
// when there is none that this node manages.
func (rt *Runtime) inspect(ctx context.Context, taskID string) (container.InspectResponse, error) {
	if err := checkTaskID(taskID); err != nil {
		return container.InspectResponse{}, err
	}
	name := ContainerName(taskID)
	res, err := rt.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return container.InspectResponse{}, fmt.Errorf("task %s: %w", taskID, ErrNotFound)
		}
		return container.InspectResponse{}, fmt.Errorf("inspect container %s: %w", name, err)
	}
	c := res.Container
	var labels map[string]string
	if c.Config != nil {
		labels = c.Config.Labels
	}
	// A container of that name that is not ours (made by hand, or by the
	// agent of another node sharing this engine) is not this task's VPS.
	if labels[rt.labelManaged()] != "true" || labels[rt.labelTask()] != taskID || labels[rt.labelNode()] != rt.node {
		return container.InspectResponse{}, fmt.Errorf("task %s: container %s is not managed by node %s: %w", taskID, name, rt.node, ErrNotFound)
	}
	return c, nil
}

// Inspect returns the task's container. The error wraps ErrNotFound when the
// task has no container on this node.
func (rt *Runtime) Inspect(ctx context.Context, taskID string) (Info, error) {
	c, err := rt.inspect(ctx, taskID)
	if err != nil {
		return Info{}, err
	}
	return rt.info(ctx, taskID, c)
}

// info builds an Info from an inspect response, reading the host keys back
// from the container's filesystem (this works in any state).
func (rt *Runtime) info(ctx context.Context, taskID string, c container.InspectResponse) (Info, error) {
	in := Info{TaskID: taskID, ContainerID: c.ID}
	if c.Config != nil {
		in.Image = c.Config.Image
		in.Labels = c.Config.Labels
	}
	if c.State != nil {
		in.State = State(c.State.Status)
	}
	if addr, err := rt.sshAddrOf(ctx, c); err == nil {
		in.SSHAddr = addr
	}
	keys, err := rt.hostKeysOf(ctx, taskID, c)
	if err != nil {
		return Info{}, fmt.Errorf("task %s: read host keys: %w", taskID, err)
	}
	in.HostKeys = keys
	return in, nil
}

// hostKeysOf returns the container's host keys, read from its filesystem
// once per start of the container. Every heartbeat lists every VPS, and
// reading the keys takes several archive copies per container, which on a
// busy engine made a heartbeat outlast the host's timeout. sshd loads its
// keys when it starts, and the gateway keeps the keys pinned at creation
// anyway, so a key replaced inside a running VPS is reported after its
// next start.
//
// Keys the VPS's root broke are left out, with one warning per start: a
// read fails only when ctx ended or the engine did not answer, and is then
// not cached, so the next call reads again. (The gateway keeps the pinned
// keys when a VPS reports none.)
func (rt *Runtime) hostKeysOf(ctx context.Context, taskID string, c container.InspectResponse) ([]string, error) {
	started := ""
	if c.State != nil {
		started = c.State.StartedAt
	}
	if keys, ok := rt.keys.get(c.ID, started); ok {
		return keys, nil
	}
	keys, problems, err := rt.readHostKeys(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		rt.log.Warn("vps host keys incomplete, reporting the readable ones",
			"task_id", taskID, "keys", len(keys), "problems", strings.Join(problems, "; "))
	}
	rt.keys.put(c.ID, started, keys)
	return slices.Clone(keys), nil
}

// List returns this node's VPS containers in every state, for re-adoption
// after an agent restart.
func (rt *Runtime) List(ctx context.Context) ([]Info, error) {
	f := client.Filters{}.
		Add("label", rt.labelManaged()+"=true").
		Add("label", rt.labelNode()+"="+rt.node)
	res, err := rt.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]Info, 0, len(res.Items))
	for _, s := range res.Items {
		taskID := s.Labels[rt.labelTask()]
		c, err := rt.inspect(ctx, taskID)
		if errors.Is(err, ErrNotFound) || checkTaskID(taskID) != nil {
			continue // removed meanwhile, or a label that is not ours
		}
		if err != nil {
			return nil, err
		}
		if c.ID != s.ID {
			continue // our labels on a container not named for its task
		}
		in, err := rt.info(ctx, taskID, c)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// SSHAddr returns where the task's sshd answers right now: the container's
// address on its Docker network ("172.17.0.5:22"), or where port 22 is
// published on loopback when this node cannot reach container networks
// (see addr.go). It inspects the container on every call, because both may
// change when the container restarts. The error wraps ErrNotFound or
// ErrNotRunning.
func (rt *Runtime) SSHAddr(ctx context.Context, taskID string) (string, error) {
	c, err := rt.inspect(ctx, taskID)
	if err != nil {
		return "", err
	}
	return rt.sshAddrOf(ctx, c)
}

// SSHTarget is where a VPS's sshd answers: Addr as SSHAddr returns it and,
// when the container has a network namespace of its own, that namespace
// (Docker's sandbox key) and the sshd's address on its loopback.
type SSHTarget struct {
	Addr          string
	Namespace     string
	NamespaceAddr string
}

// SSHTarget is SSHAddr plus the container's own network namespace, for a
// relay that can dial inside it (see addr.go). One inspect serves both.
func (rt *Runtime) SSHTarget(ctx context.Context, taskID string) (SSHTarget, error) {
	c, err := rt.inspect(ctx, taskID)
	if err != nil {
		return SSHTarget{}, err
	}
	addr, err := rt.sshAddrOf(ctx, c)
	if err != nil {
		return SSHTarget{}, err
	}
	t := SSHTarget{Addr: addr}
	if ns, ok := sandboxNamespace(c); ok {
		t.Namespace = ns
		t.NamespaceAddr = net.JoinHostPort(loopback.String(), sshPort.Port())
	}
	return t, nil
}

// publishedSSHAddr returns where port 22 of a running container is
// published.
func publishedSSHAddr(c container.InspectResponse) (string, error) {
	if c.State == nil || !c.State.Running || c.State.Paused || c.State.Restarting {
		st := "unknown"
		if c.State != nil {
			st = string(c.State.Status)
		}
		return "", fmt.Errorf("container %s is %s: %w", c.Name, st, ErrNotRunning)
	}
	if c.NetworkSettings != nil {
		for _, b := range c.NetworkSettings.Ports[sshPort] {
			port, err := strconv.ParseUint(b.HostPort, 10, 16)
			if err != nil || port == 0 {
				continue
			}
			ip := b.HostIP
			if !ip.IsValid() || ip.IsUnspecified() {
				ip = loopback
			}
			return net.JoinHostPort(ip.String(), b.HostPort), nil
		}
	}
	return "", fmt.Errorf("container %s has no published %s port", c.Name, sshPort)
}

// Start starts the task's stopped container and waits for its sshd.
// Starting a running container only waits. On an ErrNoSSHD error the
// container is left as it is; its restart policy may keep restarting it.
func (rt *Runtime) Start(ctx context.Context, taskID string) (Info, error) {
	c, err := rt.inspect(ctx, taskID)
	if err != nil {
		return Info{}, err
	}
	if _, err := rt.cli.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
		return Info{}, fmt.Errorf("start container %s: %w", c.Name, err)
	}
	rt.log.Info("vps started", "task_id", taskID)
	return rt.waitReady(ctx, taskID)
}

// Stop stops the task's container: SIGTERM, then SIGKILL after the stop
// timeout. Stopping a stopped container succeeds. The container's files,
// including host keys and authorized_keys, are kept.
func (rt *Runtime) Stop(ctx context.Context, taskID string) error {
	c, err := rt.inspect(ctx, taskID)
	if err != nil {
		return err
	}
	secs := int(rt.stopTimeout.Round(time.Second) / time.Second)
	if _, err := rt.cli.ContainerStop(ctx, c.ID, client.ContainerStopOptions{Timeout: &secs}); err != nil {
		return fmt.Errorf("stop container %s: %w", c.Name, err)
	}
	rt.log.Info("vps stopped", "task_id", taskID)
	return nil
}

// Restart stops (as Stop) and starts the task's container, then waits for
// its sshd as Start does. The host keys are unchanged; the published port
// may change.
func (rt *Runtime) Restart(ctx context.Context, taskID string) (Info, error) {
	c, err := rt.inspect(ctx, taskID)
	if err != nil {
		return Info{}, err
	}
	secs := int(rt.stopTimeout.Round(time.Second) / time.Second)
	if _, err := rt.cli.ContainerRestart(ctx, c.ID, client.ContainerRestartOptions{Timeout: &secs}); err != nil {
		return Info{}, fmt.Errorf("restart container %s: %w", c.Name, err)
	}
	rt.log.Info("vps restarted", "task_id", taskID)
	return rt.waitReady(ctx, taskID)
}

// Remove deletes the task's container, running or not, with its anonymous
// volumes. The error wraps ErrNotFound when there was none.
func (rt *Runtime) Remove(ctx context.Context, taskID string) error {
	c, err := rt.inspect(ctx, taskID)
	if err != nil {
		return err
	}
	if err := rt.remove(ctx, c.ID); err != nil {
		return fmt.Errorf("remove container %s: %w", c.Name, err)
	}
	rt.keys.forget(c.ID)
	rt.log.Info("vps removed", "task_id", taskID)
	return nil
}

func (rt *Runtime) remove(ctx context.Context, id string) error {
	_, err := rt.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	return err
}
