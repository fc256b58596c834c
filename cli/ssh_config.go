package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/kohakuriver/kohakuriver/store"
)

// SSHConfigCmd writes an ssh_config with one Host entry per VPS, so that
// ssh, scp, sftp, rsync and IDEs reach VPSs by name.
type SSHConfigCmd struct {
	Output string `short:"o" placeholder:"FILE" predictor:"file" help:"Write the config to FILE (mode 0600) instead of printing it."`
}

// Help is the detailed help.
func (SSHConfigCmd) Help() string {
	return `Each VPS gets "Host kohakuriver-<task_id> kohakuriver-<name>" with the gateway's
address and port, the routing user <login>@<task_id>, the key --gen-ssh-key made
(when it exists here) and the gateway's pinned host keys. Run it again after
creating or deleting VPSs.

Examples:
  kohakuriver ssh config --output ~/.ssh/kohakuriver_config
  echo 'Include ~/.ssh/kohakuriver_config' >> ~/.ssh/config   # once; before any Host line
  ssh kohakuriver-web
  scp file.txt kohakuriver-web:/tmp/
  rsync -av ./src/ kohakuriver-web:src/`
}

// Run writes the config.
func (c *SSHConfigCmd) Run(ctx context.Context, env *Env, cl *Cluster) error {
	list, err := cl.API.ListVPS(ctx)
	if err != nil {
		return fmt.Errorf("list VPSs: %w", err)
	}
	known, err := pinGateway(ctx, env, cl)
	if err != nil {
		return err
	}
	valid := list[:0:0]
	for _, v := range list {
		if err := checkVPS(v); err != nil {
			fmt.Fprintln(env.Stderr, "kohakuriver: warning: skipped:", err)
			continue
		}
		valid = append(valid, v)
	}
	list = valid
	text := sshConfig(env, cl, list, known)
	if c.Output == "" {
		_, err := fmt.Fprint(env.Stdout, text)
		return err
	}
	path := env.expand(c.Output)
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if err := writeFileAtomic(path, []byte(text), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	fmt.Fprintf(env.Stderr, "Wrote %d host(s) to %s. Add this line to ~/.ssh/config, before any Host or Match line:\n\n  Include %s\n\n",
		len(list), path, sshConfigQuote(path))
	if len(list) > 0 {
		fmt.Fprintf(env.Stderr, "Then: ssh %s\n", hostAlias(list[0].TaskID))
	}
	return nil
}

// hostAlias is the ssh_config Host name of a VPS (or of its name).
func hostAlias(ref string) string { return "kohakuriver-" + ref }

// sshConfig renders the config for list (checked with checkVPS). IdentityFile is set only for
// VPSs whose generated key exists here; other VPSs use ssh's own keys and
// agent. Paths are absolute: ssh expands ~ to the passwd home directory,
// which need not be $HOME.
func sshConfig(env *Env, cl *Cluster, list []store.VPS, known string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# KohakuRiver VPSs on %s, written by `kohakuriver ssh config`; rerun it to refresh.\n", cl.Host)
	fmt.Fprintf(&b, "# Host keys are the gateway's, pinned in %s.\n", known)
	for _, v := range list {
		names := hostAlias(v.TaskID)
		if v.Name != "" {
			// Prefixed, so a VPS name never shadows another Host entry.
			names += " " + hostAlias(v.Name)
		}
		login := v.LoginUser
		if login == "" {
			login = store.DefaultLoginUser
		}
		fmt.Fprintf(&b, "\nHost %s\n", names)
		fmt.Fprintf(&b, "    HostName %s\n", cl.Host)
		fmt.Fprintf(&b, "    Port %d\n", cl.SSHPort)
		fmt.Fprintf(&b, "    User %s@%s\n", login, v.TaskID)
		if key := generatedKeyPath(env, v.TaskID); fileExists(key) {
			fmt.Fprintf(&b, "    IdentityFile %s\n", sshConfigQuote(key))
			fmt.Fprintf(&b, "    IdentitiesOnly yes\n")
		}
		fmt.Fprintf(&b, "    UserKnownHostsFile %s\n", sshConfigQuote(known))
		fmt.Fprintf(&b, "    HostKeyAlias %s\n", gatewayAlias)
		fmt.Fprintf(&b, "    StrictHostKeyChecking yes\n")
		// The gateway is reached directly: a ProxyCommand or ProxyJump
		// under "Host *" later in the user's config must not apply (the
		// first value ssh reads wins, and this one also stops ProxyJump).
		fmt.Fprintf(&b, "    ProxyCommand none\n")
	}
	return b.String()
}
