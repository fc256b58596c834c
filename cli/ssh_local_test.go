package cli

import (
	"bufio"
	"context"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/gateway/testport"
	"github.com/kohakuriver/kohakuriver/store"
)

// echoServer echoes every connection until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func TestForwarder(t *testing.T) {
	t.Parallel()
	target := echoServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, target: target, log: io.Discard, dial: (&net.Dialer{}).DialContext}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- f.serve(ctx) }()

	// Several connections at once, each echoed independently; one is left
	// open to prove that shutdown closes it.
	var open net.Conn
	for i := range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		msg := strings.Repeat(string(rune('a'+i)), 100<<10)
		go func() { _, _ = io.WriteString(c, msg) }()
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("conn %d: echo %v", i, err)
		}
		if i == 2 {
			open = c
			continue
		}
		// Half-close: the echo server sees EOF, closes, and so do we.
		c.(*net.TCPConn).CloseWrite()
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("conn %d after half-close: %v", i, err)
		}
		c.Close()
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
	open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Read(make([]byte, 1)); err == nil {
		t.Fatal("a forwarded connection survived shutdown")
	}
	open.Close()
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("still listening after shutdown")
	}
}

// TestSSHLocalPortReachesGateway: --local-port forwards to the VPS's own
// gateway port, so the gateway's SSH banner comes back through it (the
// Docker e2e test logs in through it).
func TestSSHLocalPortReachesGateway(t *testing.T) {
	t.Parallel()
	th := startHost(t)
	v := th.addVPS(t, store.VPS{Name: "web"})
	for _, tc := range []struct {
		name      string
		args      []string
		target    string // the gateway address the forward goes to
		sshTarget string // user@host in the printed ssh line
	}{
		{"the VPS's own port", nil, "127.0.0.1:" + itoa(v.SSHPort), "root@127.0.0.1"},
		{"--proxy-port", []string{"--proxy-port", itoa(th.sshPort)}, "127.0.0.1:" + itoa(th.sshPort), "root@" + v.TaskID + "@127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) { testLocalPort(t, th, v, tc.args, tc.target, tc.sshTarget) })
	}
}

func testLocalPort(t *testing.T, th *testHost, v store.VPS, extra []string, target, sshTarget string) {
	deadline := time.Now().Add(10 * time.Second)
	for !th.h.Gateway().PortListening(v.SSHPort) {
		if time.Now().After(deadline) {
			t.Fatal("gateway does not listen on the VPS port")
		}
		time.Sleep(20 * time.Millisecond)
	}
	u := th.admin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	u.ssh = fakeSSH(t, 99) // must not run
	free := freePort(t)
	go func() {
		done <- run(ctx, append([]string{"ssh", "web", "--local-port", itoa(free)}, extra...), u.envFor(&stdout, &stderr))
	}()

	port := waitForMatch(t, &stdout, regexp.MustCompile(`Forwarding 127\.0\.0\.1:(\d+) to VPS web`), done)
	if port != itoa(free) {
		t.Fatalf("forwarding port %s, asked for %d", port, free)
	}
	if !strings.Contains(stdout.String(), "(gateway port "+target+")") {
		t.Fatalf("forwarding to another port than %s:\n%s", target, stdout.String())
	}
	if !strings.Contains(stdout.String(), "-p "+port+" "+sshTarget+"\n") ||
		!strings.Contains(stdout.String(), "HostKeyAlias=kohakuriver-gateway") {
		t.Fatalf("no usable ssh line:\n%s", stdout.String())
	}
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	banner, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
		t.Fatalf("banner %q, %v", banner, err)
	}
	c.Close()
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the forward did not stop on cancel")
	}
}

// freePort returns a TCP port that was free a moment ago (see testport).
func freePort(t *testing.T) int { return testport.Pick(t, testport.CLI) }

// waitForMatch waits until re matches the output and returns its first
// group, failing if the command ends first.
func waitForMatch(t *testing.T, out *syncBuffer, re *regexp.Regexp, done <-chan int) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		select {
		case code := <-done:
			t.Fatalf("command ended (exit %d) before printing %v:\n%s", code, re, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %v:\n%s", re, out.String())
		}
	}
}
