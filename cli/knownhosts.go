package cli

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/kohakuriver/kohakuriver/gateway"
)

// gatewayAlias is the HostKeyAlias the gateway's host keys are pinned
// under. With HostKeyAlias ssh looks up the alias instead of [host]:port
// (ssh_config(5)), so the gateway's main port and every per-VPS port, all
// served with the same host keys, match one set of lines.
const gatewayAlias = "kohakuriver-gateway"

// pinGateway fetches the gateway's host keys over the authenticated API and
// rewrites ~/.kohakuriver/known_hosts (0600) with them, under
// "[HOST]:SSHPORT" and under gatewayAlias. It returns the file's path.
// When the user named no SSH port, cl.SSHPort becomes the one the host
// reports (a gateway moved off 8002 with HOST_SSH_PROXY_PORT).
//
// The file holds one cluster's keys: logging in to another host and
// connecting rewrites it.
func pinGateway(ctx context.Context, env *Env, cl *Cluster) (string, error) {
	info, err := cl.API.Gateway(ctx)
	if err != nil {
		return "", fmt.Errorf("fetch the gateway's host keys: %w", err)
	}
	var keys []gossh.PublicKey
	for _, line := range info.HostKeys {
		k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return "", fmt.Errorf("the host sent a gateway host key that is not an OpenSSH public key (%q); the host and this CLI may be of different versions", line)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return "", fmt.Errorf("the host reported no gateway host keys; check the host's log")
	}
	if cl.sshPortGuessed && info.SSHPort > 0 && info.SSHPort < 65536 {
		cl.SSHPort = info.SSHPort
	}
	hostPort := knownhosts.Normalize(net.JoinHostPort(cl.Host, strconv.Itoa(cl.SSHPort)))
	var b strings.Builder
	fmt.Fprintf(&b, "# KohakuRiver gateway host keys of %s, fetched from its API.\n# Rewritten by kohakuriver (ssh, ssh config, vps create); do not edit.\n", hostPort)
	for _, pattern := range []string{hostPort, gatewayAlias} {
		for _, l := range gateway.KnownHostsLines(keys, pattern) {
			b.WriteString(l + "\n")
		}
	}
	path := env.knownHostsPath()
	if err := writeFileAtomic(path, []byte(b.String()), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}

// hostKeyOptions are the ssh options that check the gateway's host key
// against known, without ever prompting.
func hostKeyOptions(known string) []string {
	return []string{
		"-o", "UserKnownHostsFile=" + sshConfigQuote(known),
		"-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=" + gatewayAlias,
	}
}

// sshConfigQuote quotes a file name for ssh_config or -o when it holds
// spaces (ssh splits UserKnownHostsFile at whitespace).
func sshConfigQuote(s string) string {
	if strings.ContainsAny(s, " \t") {
		return `"` + s + `"`
	}
	return s
}
