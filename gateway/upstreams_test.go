package gateway

// The VPS side of the gateway: sshds of other makes and key setups, and the
// hop itself (one upstream connection per client connection), with many
// channels multiplexed over it and a client that vanishes mid-transfer.
// Assumes OpenSSH's sshd, and Dropbear (dropbear-bin) for its test.

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// addVPSConfigured is addVPS with extra sshd_config lines. sshd keeps the
// first value it reads for a keyword, so the lines can add keywords startSSHD
// does not set (MaxSessions, ClientAliveInterval, X11DisplayOffset, more
// HostKey lines) but cannot override the ones it does.
func (g *testGateway) addVPSConfigured(t testing.TB, name, sshdConfig string, keys ...userKey) (store.VPS, *sshd) {
	t.Helper()
	d := startSSHD(t, g.ca.PublicKey(), sshdConfig)
	return g.registerUpstream(t, name, d.addr, []string{d.hostKey}, keys...), d
}

// registerUpstream registers a running VPS whose sshd (of any make) listens
// at addr and shows one of hostKeys.
func (g *testGateway) registerUpstream(t testing.TB, name, addr string, hostKeys []string, keys ...userKey) store.VPS {
	t.Helper()
	v := store.VPS{
		TaskID: store.NewTaskID(), Name: name, Owner: "alice", Node: "node1",
		Status: store.StatusRunning, LoginUser: loginUser(t), HostKeys: hostKeys,
	}
	for _, k := range keys {
		v.Keys = append(v.Keys, k.auth)
	}
	g.hop.mu.Lock()
	g.hop.addrs[v.TaskID] = addr
	g.hop.mu.Unlock()
	g.dir.put(v)
	return v
}

// TestUpstreamWithSeveralHostKeys: a VPS sshd with ed25519, ECDSA and RSA
// host keys is reached whichever one was pinned (the hop asks for exactly the
// pinned type), and a pin that matches none of them is refused.
func TestUpstreamWithSeveralHostKeys(t *testing.T) {
	dir := t.TempDir()
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubLine := func(k any) string {
		s, err := gossh.NewSignerFromKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(s.PublicKey())))
	}
	writeKey(t, filepath.Join(dir, "host_ecdsa"), ecKey)
	writeKey(t, filepath.Join(dir, "host_rsa"), rsaKey)
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	_, d := g.addVPSConfigured(t, "multi", fmt.Sprintf("HostKey %s/host_ecdsa\nHostKey %s/host_rsa", dir, dir))
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)

	tests := []struct {
		name    string
		pin     string
		wantErr string
	}{
		{name: "ed25519 pinned", pin: d.hostKey},
		{name: "ecdsa pinned", pin: pubLine(ecKey)},
		{name: "rsa pinned", pin: pubLine(rsaKey)},
		{name: "unknown rsa key pinned", pin: pubLine(otherRSA), wantErr: "does not match"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("multi%d", i)
			g.registerUpstream(t, name, d.addr, []string{tt.pin}, key)
			out, errOut, code := runSSH(t, nil, g.sshArgs(key, g.port(), name+"@127.0.0.1", "echo ok")...)
			if tt.wantErr != "" {
				if code != 255 || !strings.Contains(errOut, tt.wantErr) {
					t.Fatalf("status %d stderr %q; want refusal %q", code, errOut, tt.wantErr)
				}
				return
			}
			if code != 0 || out != "ok\n" {
				t.Fatalf("status %d stdout %q stderr %q", code, out, errOut)
			}
		})
	}
}

// TestManyConcurrentChannels: 50 sessions open at once over one client
// connection, hence one hop, each moving 1 MiB up, down or both ways; every
// byte arrives intact.
func TestManyConcurrentChannels(t *testing.T) {
	const n = 50
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	// sshd's MaxSessions (default 10) bounds sessions per connection and
	// the gateway keeps one hop per client connection, exactly as a direct
	// login would hit it: raise it as such a VPS would.
	g.addVPSConfigured(t, "many", "MaxSessions 64", key)
	client := dialGo(t, g, key, "many")
	sessions := make([]*gossh.Session, n)
	for i := range sessions {
		s, err := client.NewSession()
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		sessions[i] = s
	}
	modes := []struct {
		name string
		cmd  string
		up   bool
		// check judges stdout and stderr against the uploaded data's sum.
		check func(stdout, stderr []byte, sum [32]byte) bool
	}{
		{name: "round trip", cmd: "cat", up: true, check: func(out, _ []byte, sum [32]byte) bool {
			return sha256.Sum256(out) == sum
		}},
		{name: "upload", cmd: "sha256sum", up: true, check: func(out, _ []byte, sum [32]byte) bool {
			return strings.HasPrefix(string(out), fmt.Sprintf("%x ", sum))
		}},
		// The sum goes to stderr, where the login shell's start-up files
		// may have written too (root's ~/.bashrc running `pyenv init` on
		// this machine complains when 50 shells contend for its lock).
		{name: "download", cmd: `f=$(mktemp) && head -c 1048576 /dev/urandom >"$f" && sha256sum <"$f" >&2 && cat "$f"; rm -f "$f"`,
			check: func(out, errOut []byte, _ [32]byte) bool {
				return len(out) == 1<<20 && strings.Contains("\n"+string(errOut), fmt.Sprintf("\n%x ", sha256.Sum256(out)))
			}},
	}
	errs := make(chan error, n)
	for i, s := range sessions {
		mode := modes[i%len(modes)]
		go func() {
			defer s.Close()
			var sum [32]byte
			if mode.up {
				data := make([]byte, 1<<20)
				_, _ = rand.Read(data)
				sum = sha256.Sum256(data)
				s.Stdin = bytes.NewReader(data)
			}
			var stdout, stderr bytes.Buffer
			s.Stdout, s.Stderr = &stdout, &stderr
			if err := s.Run(mode.cmd); err != nil {
				errs <- fmt.Errorf("session %d (%s): %v; stderr %q", i, mode.name, err, stderr.String())
				return
			}
			if !mode.check(stdout.Bytes(), stderr.Bytes(), sum) {
				errs <- fmt.Errorf("session %d (%s): wrong data: %d bytes out, stderr %q", i, mode.name, stdout.Len(), stderr.String())
				return
			}
			errs <- nil
		}()
	}
	timeout := time.After(3 * time.Minute)
	for range sessions {
		select {
		case err := <-errs:
			if err != nil {
				t.Error(err)
			}
		case <-timeout:
			t.Fatal("sessions did not finish")
		}
	}
}

// dialGoConn is dialGo that also returns the TCP connection, to cut it.
func dialGoConn(t testing.TB, g *testGateway, key userKey, user string) (*net.TCPConn, *gossh.Client) {
	t.Helper()
	var pubs []gossh.PublicKey
	for _, h := range g.hostKeys {
		pubs = append(pubs, h.PublicKey())
	}
	addr := g.srv.Addr().String()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, chans, reqs, err := gossh.NewClientConn(nc, addr, &gossh.ClientConfig{
		User: user, Auth: []gossh.AuthMethod{gossh.PublicKeys(key.signer)},
		HostKeyCallback: pinnedHostKey(pubs), Timeout: 10 * time.Second,
	})
	if err != nil {
		nc.Close()
		t.Fatal(err)
	}
	client := gossh.NewClient(c, chans, reqs)
	t.Cleanup(func() { client.Close() })
	return nc.(*net.TCPConn), client
}

// establishedTo counts ESTABLISHED IPv4 TCP connections whose local port is
// port: for an sshd's port, the hops it still serves.
func establishedTo(t testing.TB, port int) int {
	t.Helper()
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("cannot count connections: %v", err)
	}
	local := fmt.Sprintf(":%04X", port)
	n := 0
	for _, line := range strings.Split(string(data), "\n")[1:] {
		// sl local_address rem_address st ...; st 01 is ESTABLISHED.
		f := strings.Fields(line)
		if len(f) > 3 && strings.HasSuffix(f[1], local) && f[3] == "01" {
			n++
		}
	}
	return n
}

// busyStreaming runs cat in a session and keeps data flowing both ways; it
// returns once 4 MiB came back.
func busyStreaming(t *testing.T, client *gossh.Client, _ string) (wait func()) {
	s, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdin, _ := s.StdinPipe()
	stdout, _ := s.StdoutPipe()
	if err := s.Start("cat"); err != nil {
		t.Fatal(err)
	}
	var back atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		chunk := make([]byte, 32<<10)
		for {
			if _, err := stdin.Write(chunk); err != nil {
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := stdout.Read(buf)
			back.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	waitFor(t, "data to flow", func() bool { return back.Load() >= 4<<20 })
	return func() { within(t, "client goroutines to end", func() bool { wg.Wait(); return true }) }
}

// busyEverything holds an idle pty shell, a remote forward with a live
// connection through it, and a direct-tcpip channel to a service in the VPS.
func busyEverything(t *testing.T, client *gossh.Client, target string) (wait func()) {
	s, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RequestPty("xterm", 24, 80, gossh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	l, err := client.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	local, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fwd := within(t, "forwarded connection", func() net.Conn { return <-accepted })
	if fwd == nil {
		t.Fatal("remote forward accepted nothing")
	}
	if _, err := local.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(fwd, make([]byte, 1)); err != nil {
		t.Fatalf("remote forward carries nothing: %v", err)
	}
	dc, err := client.Dial("tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(dc, "ping\n")
	if line, err := bufio.NewReader(dc).ReadString('\n'); err != nil || line != "echo:ping\n" {
		t.Fatalf("direct-tcpip: %q %v", line, err)
	}
	return func() { local.Close() }
}

// TestAbruptDisconnectLeavesNothingBehind: a client that vanishes (FIN or
// RST, no SSH disconnect) in the middle of things leaves no gateway
// connection, no hop to the VPS and no goroutines behind.
func TestAbruptDisconnectLeavesNothingBehind(t *testing.T) {
	// Goroutines that may legitimately differ from the baseline (runtime
	// and net/http internals, timers firing).
	const slack = 5
	tests := []struct {
		name  string
		reset bool // RST (SO_LINGER 0) instead of FIN
		busy  func(t *testing.T, client *gossh.Client, target string) (wait func())
	}{
		{name: "session mid-transfer, FIN", busy: busyStreaming},
		{name: "session mid-transfer, RST", reset: true, busy: busyStreaming},
		{name: "pty shell, remote forward, direct-tcpip, RST", reset: true, busy: busyEverything},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGateway(t, nil)
			key := newUserKey(t)
			_, d := g.addVPS(t, "cut", 0, key)
			target := echoServer(t)
			_, portStr, _ := net.SplitHostPort(d.addr)
			sshdPort, _ := strconv.Atoi(portStr)
			settled := func() bool { return g.srv.ActiveConns() == 0 && establishedTo(t, sshdPort) == 0 }

			// One complete connection first, so whatever starts lazily is
			// in the baseline.
			warm := dialGo(t, g, key, "cut")
			if err := runSession(warm, "echo done"); err != nil {
				t.Fatal(err)
			}
			warm.Close()
			waitFor(t, "the warm-up connection to end", settled)
			base := runtime.NumGoroutine()

			nc, client := dialGoConn(t, g, key, "cut")
			wait := tt.busy(t, client, target)
			if g.srv.ActiveConns() != 1 || establishedTo(t, sshdPort) != 1 {
				t.Fatalf("%d gateway conns and %d hops while busy, want 1 and 1", g.srv.ActiveConns(), establishedTo(t, sshdPort))
			}
			if tt.reset {
				_ = nc.SetLinger(0)
			}
			nc.Close()
			wait()
			waitFor(t, "the gateway connection and its hop to end", settled)
			deadline := time.Now().Add(15 * time.Second)
			for runtime.NumGoroutine() > base+slack {
				if time.Now().After(deadline) {
					var buf bytes.Buffer
					_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
					t.Fatalf("%d goroutines, %d before the connection:\n%s", runtime.NumGoroutine(), base, buf.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}
