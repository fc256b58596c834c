package gateway

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// unixEchoServer is echoServer on a unix socket (inside the "VPS": the
// test sshd shares this machine's filesystem).
func unixEchoServer(t *testing.T) string {
	t.Helper()
	return serveEcho(t, "unix", filepath.Join(t.TempDir(), "echo.sock"))
}

// TestLocalForwardToUnixSocket: -L to a unix socket in the VPS
// (direct-streamlocal@openssh.com).
func TestLocalForwardToUnixSocket(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "unixl", 0, key)
	sock := unixEchoServer(t)
	local := freePort(t)
	startSSH(t, g.sshArgs(key, g.port(), "-N", "-o", "ExitOnForwardFailure=yes",
		"-L", fmt.Sprintf("127.0.0.1:%d:%s", local, sock), "unixl@127.0.0.1")...)
	expectEcho(t, func() (net.Conn, error) { return net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(local)) })
}

// TestRemoteForwardFromUnixSocket: -R from a unix socket the VPS's sshd
// listens on (streamlocal-forward@openssh.com and its
// forwarded-streamlocal channels).
func TestRemoteForwardFromUnixSocket(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "unixr", 0, key)
	target := echoServer(t)
	remote := filepath.Join(t.TempDir(), "remote.sock")
	startSSH(t, g.sshArgs(key, g.port(), "-N", "-o", "ExitOnForwardFailure=yes",
		"-R", remote+":"+target, "unixr@127.0.0.1")...)
	expectEcho(t, func() (net.Conn, error) { return net.Dial("unix", remote) })
}

// TestGatewayAsProxyJump: ssh -J through the gateway to an sshd reachable
// from inside the VPS.
func TestGatewayAsProxyJump(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	_, d := g.addVPS(t, "jump", 0, key)
	// The final target trusts the user's key directly.
	ak := filepath.Join(d.dir, "authorized_keys")
	f, err := os.OpenFile(ak, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, key.auth.Line)
	f.Close()
	host, port, _ := net.SplitHostPort(d.addr)
	// The target's own host key, pinned for the final hop.
	known := filepath.Join(t.TempDir(), "known_hosts_target")
	if err := os.WriteFile(known, []byte(fmt.Sprintf("[%s]:%s %s\n", host, port, d.hostKey)), 0o600); err != nil {
		t.Fatal(err)
	}
	// ProxyCommand (what -J expands to) carries the gateway's options.
	jump := "ssh " + strings.Join(g.sshArgs(key, g.port(), "-W", "%h:%p", "jump@127.0.0.1"), " ")
	args := []string{"-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + known, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "ProxyCommand=" + jump, "-i", key.path, "-p", port, loginUser(t) + "@" + host, "echo jumped"}
	out, errOut, code := runSSH(t, nil, args...)
	if code != 0 || out != "jumped\n" {
		t.Fatalf("ssh via the gateway as jump host: %d %q %q", code, out, errOut)
	}
}
