package cli

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"syscall"

	"github.com/kohakuriver/kohakuriver/store"
)

// SSHCmd runs the system ssh through the gateway with username routing:
// ssh -p <proxy port> -l <user>@<task_id> HOST, the gateway's host key
// checked against the known_hosts file the CLI keeps.
type SSHCmd struct {
	Ref       string   `arg:"" name:"task_id" help:"Task id or name of the VPS."`
	Key       string   `placeholder:"PATH" predictor:"file" help:"Private key to log in with (default: ~/.ssh/kohakuriver_<task_id> if it exists, else ssh's own keys and agent)."`
	User      string   `placeholder:"USER" help:"User inside the VPS (default: the VPS's login user, root unless set at create)."`
	ProxyPort int      `name:"proxy-port" placeholder:"PORT" help:"The gateway's SSH port (default: --ssh-port, 8002)."`
	LocalPort int      `name:"local-port" placeholder:"N" help:"Instead of connecting, forward 127.0.0.1:N to the VPS through the gateway until Ctrl-C, for any ssh client: ssh -p N root@127.0.0.1 (to the VPS's own port; with --proxy-port to that port, and the user name is root@TASK)."`
	Args      []string `arg:"" optional:"" passthrough:"" name:"ssh-args" help:"After --: more ssh options, then the remote command."`
}

// Help is the detailed help.
func (SSHCmd) Help() string {
	return `The gateway's host keys are fetched over the API into ~/.kohakuriver/known_hosts and
checked (StrictHostKeyChecking=yes): there is never a prompt. The exit status is ssh's.

Examples:
  kohakuriver ssh 7291847561928374651
  kohakuriver ssh web --user alice
  kohakuriver ssh web -- -L 8080:localhost:80 -N     # ssh options after --
  kohakuriver ssh web -- 'cd /srv && ls -la'          # a remote command
  kohakuriver ssh web --local-port 2222              # for tools that need host:port`
}

// Run connects (or serves --local-port).
func (c *SSHCmd) Run(ctx context.Context, env *Env, cl *Cluster) error {
	v, err := cl.API.GetVPS(ctx, c.Ref)
	if err != nil {
		return err
	}
	if err := checkVPS(v); err != nil {
		return err
	}
	if err := reachable(v); err != nil {
		return err
	}
	key, err := c.keyFile(env, v)
	if err != nil {
		return err
	}
	known, err := pinGateway(ctx, env, cl)
	if err != nil {
		return err
	}
	user := c.User
	if user == "" {
		user = v.LoginUser
	}
	if user == "" {
		user = store.DefaultLoginUser
	}
	if err := store.ValidateLoginUser(user); err != nil {
		return fmt.Errorf("--user: %s", userMessage(err))
	}
	if c.LocalPort != 0 {
		port, sshUser := c.localTarget(cl, v, user)
		return serveLocal(ctx, env, cl, v, c.LocalPort, port, sshUser, known, key)
	}
	return runSSH(env, c.sshArgs(cl, v, user, known, key))
}

// reachable refuses VPSs that cannot take a login, saying what to do.
func reachable(v store.VPS) error {
	switch v.Status {
	case store.StatusRunning:
		return nil
	case store.StatusStopped, store.StatusFailed:
		msg := fmt.Sprintf("VPS %s is %s", v.Ref(), v.Status)
		if v.Message != "" {
			msg += " (" + v.Message + ")"
		}
		return fmt.Errorf("%s: start it with `kohakuriver vps start %s`", msg, v.Ref())
	case store.StatusLost:
		return fmt.Errorf("VPS %s is lost: its node %s stopped reporting; see `kohakuriver node status %s`", v.Ref(), v.Node, v.Node)
	}
	return fmt.Errorf("VPS %s is %s; wait until it is running (`kohakuriver vps status %s`)", v.Ref(), v.Status, v.Ref())
}

// keyFile is --key, else the key --gen-ssh-key made for v if it exists,
// else "" (ssh's own keys and agent).
func (c *SSHCmd) keyFile(env *Env, v store.VPS) (string, error) {
	if c.Key != "" {
		p := env.expand(c.Key)
		if !fileExists(p) {
			return "", fmt.Errorf("--key %s: no such file", p)
		}
		return p, nil
	}
	if p := generatedKeyPath(env, v.TaskID); fileExists(p) {
		return p, nil
	}
	return "", nil
}

// localTarget is where --local-port forwards to, and the user name ssh
// then gives. By default that is the VPS's own port, where the user name
// is just the login user (what IDEs and other clients expect). With
// --proxy-port, or for a VPS without a port of its own, it is the
// gateway's main port, which a network may let through alone, and the
// user name routes: LOGIN@TASK.
func (c *SSHCmd) localTarget(cl *Cluster, v store.VPS, user string) (int, string) {
	if c.ProxyPort == 0 && v.SSHPort != 0 {
		return v.SSHPort, user
	}
	return c.gatewayPort(cl), user + "@" + v.TaskID
}

// gatewayPort is --proxy-port, else the cluster's gateway port.
func (c *SSHCmd) gatewayPort(cl *Cluster) int {
	if c.ProxyPort != 0 {
		return c.ProxyPort
	}
	return cl.SSHPort
}

// sshArgs builds ssh's arguments: options, destination, then the
// passthrough arguments (more options are still parsed by ssh after the
// destination, up to the remote command).
func (c *SSHCmd) sshArgs(cl *Cluster, v store.VPS, user, known, key string) []string {
	port := c.gatewayPort(cl)
	var args []string
	if key != "" {
		// Only this key: an agent with many keys would otherwise use up
		// the gateway's authentication attempts first.
		args = append(args, "-i", key, "-o", "IdentitiesOnly=yes")
	}
	args = append(args, hostKeyOptions(known)...)
	args = append(args, "-p", strconv.Itoa(port), "-l", user+"@"+v.TaskID, cl.Host)
	return append(args, stripDashes(c.Args)...)
}

// stripDashes drops the "--" kong keeps at the start of passthrough
// arguments.
func stripDashes(args []string) []string {
	if len(args) > 0 && args[0] == "--" {
		return args[1:]
	}
	return args
}

// runSSH runs ssh with the user's stdio and makes its exit status ours.
// It is not tied to the context: Ctrl-C in an interactive session belongs
// to the remote side, and the terminal delivers it to ssh directly.
func runSSH(env *Env, args []string) error {
	cmd := exec.Command(env.SSH, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = env.Stdin, env.Stdout, env.Stderr
	err := cmd.Run()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return exitError{code: exitStatus(ee)}
	}
	if err != nil {
		return fmt.Errorf("run %s: %w (install the OpenSSH client, e.g. apt install openssh-client)", env.SSH, err)
	}
	return nil
}

// exitStatus is the child's exit code, or 128+signal as a shell reports it.
func exitStatus(ee *exec.ExitError) int {
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}
