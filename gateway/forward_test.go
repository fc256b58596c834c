package gateway

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// echoServer answers every line with "echo:" + line, standing in for a
// service inside the VPS.
func echoServer(t testing.TB) string {
	t.Helper()
	return serveEcho(t, "tcp", "127.0.0.1:0")
}

// serveEcho listens on network/address and answers each line with
// "echo:" + line until the test ends; it returns the bound address.
func serveEcho(t testing.TB, network, address string) string {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintf(c, "echo:%s\n", sc.Text())
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// expectEcho dials addr (retrying while a forward comes up) and checks one
// line makes the round trip.
func expectEcho(t testing.TB, dial func() (net.Conn, error)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := dial()
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "ping\n")
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if rerr == nil && line == "echo:ping\n" {
				return
			}
			err = fmt.Errorf("read %q: %v", line, rerr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no echo through the forward: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startSSH runs a long-lived ssh client and stops it at cleanup.
func startSSH(t testing.TB, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command("ssh", args...)
	errb := &syncBuffer{}
	cmd.Stderr = errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("ssh stderr: %s", errb.String())
		}
	})
	return cmd, errb
}

func TestLocalForward(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "fwd", 0, key)
	target := echoServer(t)
	local := freePort(t)
	startSSH(t, g.sshArgs(key, g.port(), "-N", "-o", "ExitOnForwardFailure=yes",
		"-L", fmt.Sprintf("127.0.0.1:%d:%s", local, target), "fwd@127.0.0.1")...)
	// Several connections over the one forward.
	for i := 0; i < 5; i++ {
		expectEcho(t, func() (net.Conn, error) { return net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(local)) })
	}
}

// allocatedPort waits for ssh to print the port the VPS allocated for a
// "-R 0:..." forward, which it learns from the relayed reply payload.
func allocatedPort(t testing.TB, stderr *syncBuffer) string {
	t.Helper()
	re := regexp.MustCompile(`Allocated port (\d+) for remote forward`)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if m := re.FindStringSubmatch(stderr.String()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh never reported the allocated port; stderr: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRemoteForwardAllocatedPort(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "rfwd", 0, key)
	target := echoServer(t)
	_, errb := startSSH(t, g.sshArgs(key, g.port(), "-N", "-o", "ExitOnForwardFailure=yes",
		"-R", "0:"+target, "rfwd@127.0.0.1")...)
	port := allocatedPort(t, errb)
	// The VPS listens on that port (the test sshd shares this host's
	// loopback) and its forwarded-tcpip channels come back to the client.
	expectEcho(t, func() (net.Conn, error) { return net.Dial("tcp", "127.0.0.1:"+port) })
}

func TestStdioForward(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "stdio", 0, key)
	target := echoServer(t)
	out, errOut, code := runSSH(t, []byte("one\ntwo\n"), g.sshArgs(key, g.port(), "-W", target, "stdio@127.0.0.1")...)
	if code != 0 || out != "echo:one\necho:two\n" {
		t.Fatalf("ssh -W: status %d stdout %q stderr %q", code, out, errOut)
	}
}

func TestDynamicForward(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "socks", 0, key)
	target := echoServer(t)
	host, portStr, _ := net.SplitHostPort(target)
	tport, _ := strconv.Atoi(portStr)
	local := freePort(t)
	startSSH(t, g.sshArgs(key, g.port(), "-N", "-o", "ExitOnForwardFailure=yes",
		"-D", fmt.Sprintf("127.0.0.1:%d", local), "socks@127.0.0.1")...)
	expectEcho(t, func() (net.Conn, error) {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(local))
		if err != nil {
			return nil, err
		}
		// SOCKS5, no auth, CONNECT to an IPv4 address.
		req := []byte{5, 1, 0, 5, 1, 0, 1}
		req = append(req, net.ParseIP(host).To4()...)
		req = binary.BigEndian.AppendUint16(req, uint16(tport))
		if _, err := c.Write(req); err != nil {
			c.Close()
			return nil, err
		}
		resp := make([]byte, 12)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, resp); err != nil || resp[1] != 0 || resp[3] != 0 {
			c.Close()
			return nil, fmt.Errorf("socks handshake: %v %v", resp, err)
		}
		_ = c.SetReadDeadline(time.Time{})
		return c, nil
	})
}

// startAgent runs a real ssh-agent holding key until the test ends and
// returns its socket.
func startAgent(t testing.TB, key userKey) string {
	t.Helper()
	requireTools(t, "ssh-agent", "ssh-add")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agentCmd := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agentCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agentCmd.Process.Kill(); _ = agentCmd.Wait() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ssh-agent socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	add := exec.Command("ssh-add", key.path)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v %s", err, out)
	}
	return sock
}

// withAgent points sshArgs' IdentityAgent at sock (forwarding still needs -A).
func withAgent(args []string, sock string) []string {
	for i, a := range args {
		if a == "IdentityAgent=none" {
			args[i] = "IdentityAgent=" + sock
		}
	}
	return args
}

func TestAgentForwarding(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	_, d := g.addVPS(t, "agent", 0, key)
	args := withAgent(g.sshArgs(key, g.port(), "agent@127.0.0.1", "ssh-add -l"), startAgent(t, key))
	// Without -A the VPS sees no agent...
	out, _, code := runSSH(t, nil, args...)
	if code == 0 || strings.Contains(out, key.auth.Fingerprint) {
		t.Fatalf("agent visible without -A: %d %q", code, out)
	}
	// ...with -A it lists the user's key.
	out, errOut, code := runSSH(t, nil, append([]string{"-A"}, args...)...)
	if code != 0 || !strings.Contains(out, key.auth.Fingerprint) {
		t.Fatalf("ssh -A ssh-add -l: status %d stdout %q stderr %q; want %s", code, out, errOut, key.auth.Fingerprint)
	}
	// ...and ssh from the VPS onward to another host logs in with it (the
	// VPS's own sshd, made to trust the user's key, stands in for it).
	f, err := os.OpenFile(filepath.Join(d.dir, "authorized_keys"), os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, key.auth.Line)
	f.Close()
	host, port, _ := net.SplitHostPort(d.addr)
	onward := fmt.Sprintf("ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p %s %s@%s echo onward", port, loginUser(t), host)
	args[len(args)-1] = onward
	out, errOut, code = runSSH(t, nil, append([]string{"-A"}, args...)...)
	if code != 0 || out != "onward\n" {
		t.Fatalf("onward ssh with the forwarded agent: status %d stdout %q stderr %q", code, out, errOut)
	}
}

// TestExitSignal checks a command killed by a signal shows up as such at the
// client (exit-signal relayed), using the Go client to read it exactly.
func TestExitSignal(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "sig", 0, key)
	client := dialGo(t, g, key, "sig")
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	sess.Stdout = &stdout
	err = sess.Run("echo before; kill -TERM $$")
	ee, ok := err.(*gossh.ExitError)
	if !ok || ee.Signal() != "TERM" || stdout.String() != "before\n" {
		t.Fatalf("got err %v stdout %q; want exit signal TERM after output", err, stdout.String())
	}
}

func dialGo(t testing.TB, g *testGateway, key userKey, user string) *gossh.Client {
	t.Helper()
	var pubs []gossh.PublicKey
	for _, h := range g.hostKeys {
		pubs = append(pubs, h.PublicKey())
	}
	client, err := gossh.Dial("tcp", g.srv.Addr().String(), &gossh.ClientConfig{
		User:            user,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(key.signer)},
		HostKeyCallback: pinnedHostKey(pubs),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}
