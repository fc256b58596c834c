package docker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// Spec describes a VPS to create. Only TaskID is required.
type Spec struct {
	// TaskID names the container (kohakuriver-vps-<TaskID>); letters,
	// digits, '_', '.', '-'.
	TaskID string
	// Image defaults to DefaultImage. It must already be on the node.
	Image string
	// Cores limits CPU time (NanoCPUs); 0 means no limit.
	Cores float64
	// MemoryMB limits memory; 0 means no limit.
	MemoryMB int64
	// Hostname inside the VPS; default Docker's (the short container id).
	Hostname string
	// LoginUser is the user whose ~/.ssh/authorized_keys is written
	// (default root). It must exist in the image.
	LoginUser string
	// AuthorizedKeys are complete authorized_keys lines, including the
	// gateway's "cert-authority ..." line; written as given, one per line.
	AuthorizedKeys []string
	// HostKeys are PEM private keys (OpenSSH or PKCS#8) to install as the
	// sshd's host keys, at most one per type. Empty: Create generates an
	// ed25519 key, so every VPS has its own.
	HostKeys [][]byte
	// Labels are extra container labels; the runtime's own labels win.
	Labels map[string]string
}

// Create makes the task's container, installs its host keys and
// authorized_keys, starts it and waits until its sshd answers (at most the
// ready timeout). On any error the half-made container is removed.
//
// The error wraps ErrExists, ErrImageNotFound, ErrNoUser or ErrNoSSHD where
// those apply.
func (rt *Runtime) Create(ctx context.Context, spec Spec) (Info, error) {
	if err := checkTaskID(spec.TaskID); err != nil {
		return Info{}, err
	}
	if spec.Cores < 0 || spec.MemoryMB < 0 {
		return Info{}, fmt.Errorf("task %s: negative cores or memory", spec.TaskID)
	}
	if spec.Image == "" {
		spec.Image = DefaultImage
	}
	if spec.LoginUser == "" {
		spec.LoginUser = DefaultLoginUser
	}
	authKeys, err := authorizedKeysFile(spec.AuthorizedKeys)
	if err != nil {
		return Info{}, err
	}
	hostKeys, err := prepareHostKeys(spec.HostKeys, ContainerName(spec.TaskID))
	if err != nil {
		return Info{}, err
	}

	if _, err := rt.cli.ImageInspect(ctx, spec.Image); err != nil {
		if cerrdefs.IsNotFound(err) {
			return Info{}, fmt.Errorf("%w: %q is not on this node and is never pulled; build it with `sudo bash testdata/vpsimage/build.sh` (or `docker load` it)", ErrImageNotFound, spec.Image)
		}
		return Info{}, fmt.Errorf("inspect image %s: %w", spec.Image, err)
	}

	name := ContainerName(spec.TaskID)
	res, err := rt.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:       name,
		Config:     rt.containerConfig(spec),
		HostConfig: hostConfig(spec),
	})
	if err != nil {
		if cerrdefs.IsConflict(err) {
			return Info{}, fmt.Errorf("task %s: %w", spec.TaskID, ErrExists)
		}
		return Info{}, fmt.Errorf("create container %s: %w", name, err)
	}
	log := rt.log.With("task_id", spec.TaskID, "container_id", shortID(res.ID))
	for _, w := range res.Warnings {
		log.Warn("docker create warning", "warning", w)
	}

	info, err := rt.provision(ctx, spec, res.ID, authKeys, hostKeys)
	if err != nil {
		// ctx may be what failed: cleanup gets its own bounded context so a
		// cancelled request does not leave a half-made container behind.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rerr := rt.remove(cctx, res.ID); rerr != nil {
			log.Error("remove half-made vps container", "err", rerr)
		}
		return Info{}, err
	}
	log.Info("vps created", "image", spec.Image, "ssh_addr", info.SSHAddr)
	return info, nil
}

// provision installs the files into the created container, starts it and
// waits for sshd.
func (rt *Runtime) provision(ctx context.Context, spec Spec, id string, authKeys []byte, hostKeys []hostKey) (Info, error) {
	if err := rt.installHostKeys(ctx, id, hostKeys); err != nil {
		return Info{}, err
	}
	if err := rt.writeAuthorizedKeys(ctx, id, spec.LoginUser, authKeys); err != nil {
		return Info{}, err
	}
	if _, err := rt.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return Info{}, fmt.Errorf("start container %s: %w", ContainerName(spec.TaskID), err)
	}
	info, err := rt.waitReady(ctx, spec.TaskID)
	if err != nil {
		return Info{}, err
	}
	return info, nil
}

func (rt *Runtime) containerConfig(spec Spec) *container.Config {
	labels := make(map[string]string, len(spec.Labels)+3)
	for k, v := range spec.Labels {
		labels[k] = v
	}
	labels[rt.labelManaged()] = "true"
	labels[rt.labelTask()] = spec.TaskID
	labels[rt.labelNode()] = rt.node
	return &container.Config{
		Image:        spec.Image,
		Hostname:     spec.Hostname,
		Labels:       labels,
		ExposedPorts: network.PortSet{sshPort: {}},
	}
}

// sshdCaps are the capabilities left to a VPS. sshd needs them to switch to
// the login user (SETUID, SETGID), chroot its privilege-separation child
// (SYS_CHROOT), chown ptys and files (CHOWN, FOWNER), read keys whatever
// their mode (DAC_OVERRIDE), write utmp/audit records (AUDIT_WRITE), signal
// sessions (KILL) and bind forwarded low ports as root (NET_BIND_SERVICE).
var sshdCaps = []string{
	"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL",
	"NET_BIND_SERVICE", "SETGID", "SETUID", "SYS_CHROOT",
}

func hostConfig(spec Spec) *container.HostConfig {
	useInit := true // tini as PID 1 reaps orphaned session processes
	return &container.HostConfig{
		// Published on loopback only: the node's relay is the only client.
		// An empty HostPort lets Docker pick a free port.
		PortBindings: network.PortMap{sshPort: {{HostIP: loopback}}},
		RestartPolicy: container.RestartPolicy{
			Name: container.RestartPolicyUnlessStopped,
		},
		Init:    &useInit,
		CapDrop: []string{"ALL"},
		CapAdd:  sshdCaps,
		Resources: container.Resources{
			NanoCPUs: int64(spec.Cores * 1e9),
			Memory:   spec.MemoryMB << 20,
		},
	}
}

// waitReady waits, within the ready timeout, until the task's container is
// running and its published port answers with an SSH banner, and returns
// its Info. If the container stops first or time runs out, the error wraps
// ErrNoSSHD and quotes the container's last log lines.
func (rt *Runtime) waitReady(ctx context.Context, taskID string) (Info, error) {
	readyCtx, cancel := context.WithTimeout(ctx, rt.readyTimeout)
	defer cancel()
	var lastErr error
	for backoff := 50 * time.Millisecond; ; backoff = min(backoff*2, time.Second) {
		c, err := rt.inspect(readyCtx, taskID)
		switch {
		case err != nil && readyCtx.Err() == nil:
			return Info{}, err
		case err != nil:
			lastErr = err
		case crashed(c):
			return Info{}, rt.noSSHD(c, fmt.Sprintf("container exited with code %d", c.State.ExitCode))
		default:
			addr, err := rt.sshAddrOf(readyCtx, c)
			if err == nil {
				err = readBanner(readyCtx, addr)
			}
			if err == nil {
				// Outside readyCtx: reading the keys back is not part of
				// the wait and must not be cut short by it.
				return rt.info(ctx, taskID, c)
			}
			lastErr = err
		}
		t := time.NewTimer(backoff)
		select {
		case <-readyCtx.Done():
			t.Stop()
			return Info{}, rt.notReady(ctx, taskID, lastErr)
		case <-t.C:
		}
	}
}

// crashed reports whether c is not running. Restarting means it exited and
// its restart policy will start it again: a crash loop, not a slow start.
func crashed(c container.InspectResponse) bool {
	return c.State != nil && (!c.State.Running || c.State.Restarting)
}

// notReady builds waitReady's error once its time is up. The last inspect
// may itself have been cut short by the deadline (a busy engine answers in
// seconds), so it looks at the container once more.
func (rt *Runtime) notReady(ctx context.Context, taskID string, lastErr error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("wait for vps %s: %w", taskID, context.Cause(ctx))
	}
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := rt.inspect(ictx, taskID)
	if err != nil {
		return fmt.Errorf("wait for vps %s: %w", taskID, err)
	}
	if crashed(c) {
		return rt.noSSHD(c, fmt.Sprintf("container exited with code %d", c.State.ExitCode))
	}
	return rt.noSSHD(c, fmt.Sprintf("no SSH banner within %s: %v", rt.readyTimeout, lastErr))
}

// readBanner connects to addr and reports, as nil, whether an SSH server
// greets. docker-proxy accepts connections before sshd listens and then
// closes them, so a connection alone proves nothing.
func readBanner(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	}
	// RFC 4253 section 4.2: the server may send other lines before the
	// identification string.
	r := bufio.NewReader(conn)
	for range 10 {
		line, err := r.ReadString('\n')
		if strings.HasPrefix(line, "SSH-2.0-") {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ssh banner from %s: %w", addr, err)
		}
	}
	return fmt.Errorf("no ssh banner from %s", addr)
}

// noSSHD builds the ErrNoSSHD error for container c, quoting its last log
// lines (sshd logs to stderr).
func (rt *Runtime) noSSHD(c container.InspectResponse, why string) error {
	image := ""
	if c.Config != nil {
		image = c.Config.Image
	}
	// The caller's ctx may have expired: that is often why we are here.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	logs := rt.lastLogs(ctx, c.ID, 15)
	return fmt.Errorf("image %s has %w (%s; last log lines: %s)", image, ErrNoSSHD, why, logs)
}

// lastLogs returns the container's last n log lines joined with " | ".
func (rt *Runtime) lastLogs(ctx context.Context, id string, n int) string {
	rc, err := rt.cli.ContainerLogs(ctx, id, client.ContainerLogsOptions{
		ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(n),
	})
	if err != nil {
		return fmt.Sprintf("<logs unavailable: %v>", err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	// The containers have no TTY, so the log stream is multiplexed.
	if _, err := stdcopy.StdCopy(&buf, &buf, rc); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(&buf, "<%v>", err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return "<none>"
	}
	return strings.Join(lines, " | ")
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
