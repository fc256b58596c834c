package gateway

// bridge on its own, between two SSH connections made in the test, with
// the taps openPair gives it: which directions copy extended data beside
// their data and which after it (extendedCopy), how many goroutines
// that leaves per channel, and that every byte of both arrives either way.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// channelEnd is one end of a channel with its request queue.
type channelEnd struct {
	ch   gossh.Channel
	reqs <-chan *gossh.Request
}

// testConn is an SSH connection on loopback made by testConnPair: the
// client end with the channels and global requests the server sends it, and
// the server end with the channels the client opens. The server's incoming
// global requests are refused.
type testConn struct {
	client      gossh.Conn
	clientChans <-chan gossh.NewChannel
	clientReqs  <-chan *gossh.Request
	server      *gossh.ServerConn
	serverChans <-chan gossh.NewChannel
}

// newHostSigner is a fresh ed25519 host key for a server made in a test.
func newHostSigner(tb testing.TB) gossh.Signer {
	tb.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		tb.Fatal(err)
	}
	return signer
}

func testConnPair(t *testing.T) testConn {
	t.Helper()
	hostKey := newHostSigner(t)
	srvCfg := &gossh.ServerConfig{NoClientAuth: true}
	srvCfg.AddHostKey(hostKey)
	// Loopback TCP, not net.Pipe: both sides write their version string
	// before reading, which an unbuffered pipe deadlocks.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	type srvResult struct {
		conn  *gossh.ServerConn
		chans <-chan gossh.NewChannel
		err   error
	}
	srvDone := make(chan srvResult, 1)
	go func() {
		sc, chans, reqs, err := gossh.NewServerConn(a, srvCfg)
		if err == nil {
			go gossh.DiscardRequests(reqs)
		}
		srvDone <- srvResult{sc, chans, err}
	}()
	cc, cchans, creqs, err := gossh.NewClientConn(b, "loopback", &gossh.ClientConfig{
		User: "test", HostKeyCallback: gossh.FixedHostKey(hostKey.PublicKey()),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := <-srvDone
	if srv.err != nil {
		t.Fatal(srv.err)
	}
	t.Cleanup(func() { cc.Close(); srv.conn.Close() })
	return testConn{client: cc, clientChans: cchans, clientReqs: creqs, server: srv.conn, serverChans: srv.chans}
}

// openTestChannel opens a channel of the given type over a testConnPair
// and returns both ends.
func openTestChannel(t *testing.T, kind string) (opener, accepter channelEnd) {
	t.Helper()
	tc := testConnPair(t)
	cc, srvChans := tc.client, tc.serverChans
	go gossh.DiscardRequests(tc.clientReqs)
	go rejectChannels(tc.clientChans)
	accepted := make(chan channelEnd, 1)
	go func() {
		nc := <-srvChans
		ch, reqs, err := nc.Accept()
		if err != nil {
			accepted <- channelEnd{}
			return
		}
		accepted <- channelEnd{ch, reqs}
	}()
	ch, reqs, err := cc.OpenChannel(kind, nil)
	if err != nil {
		t.Fatal(err)
	}
	accepter = <-accepted
	if accepter.ch == nil {
		t.Fatal("accept failed")
	}
	return channelEnd{ch, reqs}, accepter
}

// bridged sets up client <-> gateway <-> VPS for one channel and runs
// bridge between the gateway's two ends, with the taps openPair would give
// it; it returns the client's and the VPS's ends and a channel closed when
// bridge returned. The bridge's goroutines carry a profiler label, for
// bridgeGoroutines. The caller reads the requests arriving at either end.
func bridged(t *testing.T, kind string) (client, vps channelEnd, done <-chan struct{}) {
	t.Helper()
	client, gwDown := openTestChannel(t, kind)
	gwUp, vps := openTestChannel(t, kind)
	toVPS, toClient := pairTaps(kind == "session")
	d := make(chan struct{})
	go pprof.Do(context.Background(), pprof.Labels("bridge", t.Name()), func(context.Context) {
		defer close(d)
		bridge(gwDown.ch, gwDown.reqs, gwUp.ch, gwUp.reqs, &toVPS, &toClient)
	})
	return client, vps, d
}

// settledBridgeGoroutines waits until the test's bridge runs want
// goroutines (a queue's goroutine may still be finishing what it sent) and
// returns the count, which differs from want only if it never got there.
func settledBridgeGoroutines(t *testing.T, want int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := bridgeGoroutines(t)
		if n == want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// bridgeGoroutines counts the goroutines of the test's bridge (its label is
// inherited by every goroutine it starts).
func bridgeGoroutines(t *testing.T) int {
	t.Helper()
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		t.Fatal(err)
	}
	label := fmt.Sprintf("# labels: {%q:%q}", "bridge", t.Name())
	n, count := 0, 0
	for _, line := range strings.Split(buf.String(), "\n") {
		if c, _, ok := strings.Cut(line, " @ "); ok {
			count, _ = strconv.Atoi(c)
		}
		if strings.TrimSpace(line) == label {
			n += count
		}
	}
	return n
}

// roundTrip sends a line each way on the channel and reads it on the other
// side: after it, every goroutine of the bridge has started.
func roundTrip(t *testing.T, client, vps gossh.Channel) {
	t.Helper()
	for _, e := range []struct{ src, dst gossh.Channel }{{client, vps}, {vps, client}} {
		if _, err := e.src.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		got := within(t, "round trip", func() string {
			b := make([]byte, 5)
			if _, err := io.ReadFull(e.dst, b); err != nil {
				return err.Error()
			}
			return string(b)
		})
		if got != "ping\n" {
			t.Fatalf("round trip: got %q", got)
		}
	}
}

// readAllWithin reads r to EOF, failing the test if that takes more than
// the hang timeout.
func readAllWithin(t *testing.T, what string, r io.Reader) string {
	t.Helper()
	return string(within(t, what, func() []byte {
		b, err := io.ReadAll(r)
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
		return b
	}))
}

// TestBridgeSessionStderrIsLive: a session's VPS side sends stderr that the
// client must see at once, while stdout is still open (a prompt on stderr,
// a progress bar); the client's extended data, which no sshd reads, is
// still relayed, after the client's stdin.
func TestBridgeSessionStderrIsLive(t *testing.T) {
	client, vps, done := bridged(t, "session")
	go gossh.DiscardRequests(client.reqs)
	go gossh.DiscardRequests(vps.reqs)
	// The client's data is held until its session starts.
	if _, err := client.ch.SendRequest("shell", false, nil); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, client.ch, vps.ch)
	// The loop of both halves, a data copy each way, and a stderr copy
	// of its own only toward the client.
	if n := settledBridgeGoroutines(t, 4); n != 4 {
		t.Errorf("a session's bridge runs %d goroutines, want 4", n)
	}

	// The VPS's stderr reaches the client while its stdout stays open: with
	// the copy after the data this would wait for EOF, which never comes.
	if _, err := vps.ch.Stderr().Write([]byte("password: ")); err != nil {
		t.Fatal(err)
	}
	got := within(t, "stderr while stdout is open", func() string {
		b := make([]byte, len("password: "))
		if _, err := io.ReadFull(client.ch.Stderr(), b); err != nil {
			return err.Error()
		}
		return string(b)
	})
	if got != "password: " {
		t.Fatalf("client's stderr got %q", got)
	}

	// The client's data and extended data both arrive in full.
	in, inErr := randomText(t, 300<<10), randomText(t, 200<<10)
	go func() {
		_, _ = client.ch.Stderr().Write([]byte(inErr))
		_, _ = client.ch.Write([]byte(in))
		_ = client.ch.CloseWrite()
	}()
	if got := readAllWithin(t, "VPS stdin", vps.ch); got != in {
		t.Fatalf("VPS stdin: %d bytes, want %d, equal %v", len(got), len(in), got == in)
	}
	if got := readAllWithin(t, "VPS extended data", vps.ch.Stderr()); got != inErr {
		t.Fatalf("VPS extended data: %d bytes, want %d", len(got), len(inErr))
	}

	out, outErr := randomText(t, 100<<10), randomText(t, 100<<10)
	vpsEndsSession(t, client, vps, done, out, outErr, func() {
		_, _ = vps.ch.Write([]byte(out))
		_, _ = vps.ch.Stderr().Write([]byte(outErr))
	})
}

// vpsEndsSession has the VPS side run send (which writes out and outErr),
// then send EOF and close; the client must read exactly out on stdout and
// outErr on stderr, and the bridge return once the client closed too.
func vpsEndsSession(t *testing.T, client, vps channelEnd, done <-chan struct{}, out, outErr string, send func()) {
	t.Helper()
	go func() {
		send()
		_ = vps.ch.CloseWrite()
		_ = vps.ch.Close()
	}()
	errc := make(chan string, 1)
	go func() { b, _ := io.ReadAll(client.ch.Stderr()); errc <- string(b) }()
	if got := readAllWithin(t, "client stdout", client.ch); got != out {
		t.Fatalf("client stdout: %d bytes, want %d", len(got), len(out))
	}
	if got := within(t, "client stderr", func() string { return <-errc }); got != outErr {
		t.Fatalf("client stderr: %d bytes, want %d", len(got), len(outErr))
	}
	_ = client.ch.Close()
	within(t, "bridge to return", func() struct{} { <-done; return struct{}{} })
}

// TestBridgeSessionPTYStderrAfterData: a session that starts with a pty
// granted gets no stderr copy of its own (sshd sends none under a pty), so
// its bridge runs one goroutine fewer; were stderr to come anyway, all of it
// still arrives, after the data. A refused pty-req leaves stderr live.
func TestBridgeSessionPTYStderrAfterData(t *testing.T) {
	for _, tc := range []struct {
		name       string
		granted    bool
		goroutines int
	}{{"granted", true, 3}, {"refused", false, 4}} {
		t.Run(tc.name, func(t *testing.T) {
			client, vps, done := bridged(t, "session")
			go gossh.DiscardRequests(client.reqs)
			go func() {
				for req := range vps.reqs {
					if req.WantReply {
						_ = req.Reply(req.Type != "pty-req" || tc.granted, nil)
					}
				}
			}()
			if ok, err := client.ch.SendRequest("pty-req", true, nil); err != nil || ok != tc.granted {
				t.Fatalf("pty-req: ok %v err %v, want ok %v", ok, err, tc.granted)
			}
			if ok, err := client.ch.SendRequest("shell", true, nil); err != nil || !ok {
				t.Fatalf("shell: ok %v err %v", ok, err)
			}
			roundTrip(t, client.ch, vps.ch)
			if n := settledBridgeGoroutines(t, tc.goroutines); n != tc.goroutines {
				t.Errorf("bridge runs %d goroutines, want %d", n, tc.goroutines)
			}
			out, outErr := randomText(t, 300<<10), randomText(t, 100<<10)
			vpsEndsSession(t, client, vps, done, out, outErr, func() {
				_, _ = vps.ch.Stderr().Write([]byte(outErr[:len(outErr)/2]))
				_, _ = vps.ch.Write([]byte(out))
				_, _ = vps.ch.Stderr().Write([]byte(outErr[len(outErr)/2:]))
			})
		})
	}
}

// TestBridgeExtendedDataAfterData: on channels where neither side expects
// extended data (forwarded connections), both directions copy it after the
// data, and every byte of both still arrives, before EOF.
func TestBridgeExtendedDataAfterData(t *testing.T) {
	client, vps, done := bridged(t, "direct-tcpip")
	go gossh.DiscardRequests(client.reqs)
	go gossh.DiscardRequests(vps.reqs)
	roundTrip(t, client.ch, vps.ch)
	if n := settledBridgeGoroutines(t, 3); n != 3 {
		t.Errorf("a forwarded connection's bridge runs %d goroutines, want 3", n)
	}
	type end struct {
		name string
		src  gossh.Channel
		dst  gossh.Channel
	}
	for _, e := range []end{{"client to VPS", client.ch, vps.ch}, {"VPS to client", vps.ch, client.ch}} {
		data, ext := randomText(t, 256<<10), randomText(t, 64<<10)
		go func() {
			_, _ = e.src.Stderr().Write([]byte(ext[:len(ext)/2]))
			_, _ = e.src.Write([]byte(data))
			_, _ = e.src.Stderr().Write([]byte(ext[len(ext)/2:]))
			_ = e.src.CloseWrite()
		}()
		if got := readAllWithin(t, e.name+" data", e.dst); got != data {
			t.Fatalf("%s data: %d bytes, want %d", e.name, len(got), len(data))
		}
		if got := readAllWithin(t, e.name+" extended data", e.dst.Stderr()); got != ext {
			t.Fatalf("%s extended data: %d bytes, want %d", e.name, len(got), len(ext))
		}
	}
	_ = client.ch.Close()
	_ = vps.ch.Close()
	within(t, "bridge to return", func() struct{} { <-done; return struct{}{} })
}

// TestBridgeDirectionsIndependent: a request waiting for its reply holds up
// only its own direction. The VPS's keepalive waits on a client that does
// not answer yet; the client's requests still reach the VPS meanwhile, and
// the replies come back to whoever asked.
func TestBridgeDirectionsIndependent(t *testing.T) {
	client, vps, done := bridged(t, "session")
	keepalive := make(chan bool, 1)
	go func() {
		ok, _ := vps.ch.SendRequest("keepalive@openssh.com", true, nil)
		keepalive <- ok
	}()
	held := within(t, "the keepalive at the client", func() *gossh.Request { return <-client.reqs })
	if held.Type != "keepalive@openssh.com" {
		t.Fatalf("client got %s", held.Type)
	}
	for _, kind := range []string{"window-change", "shell"} {
		want := kind == "shell"
		answered := make(chan bool, 1)
		go func() {
			ok, _ := client.ch.SendRequest(kind, want, nil)
			answered <- ok
		}()
		req := within(t, kind+" at the VPS while the keepalive waits", func() *gossh.Request { return <-vps.reqs })
		if req.Type != kind {
			t.Fatalf("VPS got %s, want %s", req.Type, kind)
		}
		if want {
			_ = req.Reply(true, nil)
			if !within(t, "the shell's reply at the client", func() bool { return <-answered }) {
				t.Fatal("the client's shell request was refused")
			}
		}
	}
	select {
	case ok := <-keepalive:
		t.Fatalf("the keepalive was answered (%v) before the client answered it", ok)
	default:
	}
	_ = held.Reply(true, nil)
	if !within(t, "the keepalive's reply at the VPS", func() bool { return <-keepalive }) {
		t.Fatal("the client's yes reached the VPS as a no")
	}
	go gossh.DiscardRequests(client.reqs)
	go gossh.DiscardRequests(vps.reqs)
	_ = client.ch.Close()
	_ = vps.ch.Close()
	within(t, "bridge to return", func() struct{} { <-done; return struct{}{} })
}

// randomText is n printable random bytes.
func randomText(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 'a' + b[i]%26
	}
	return string(b)
}

// replyAfterClientClose is the gateway's end of a VPS channel whose exec
// reply comes back late: after the client has seen the channel close, or
// after a second if it never does. It makes the race between the reply to
// the client's exec and the VPS's CLOSE after the command ran go the bad
// way every time.
type replyAfterClientClose struct {
	gossh.Channel
	clientClosed <-chan struct{}
}

func (c replyAfterClientClose) SendRequest(name string, wantReply bool, payload []byte) (bool, error) {
	ok, err := c.Channel.SendRequest(name, wantReply, payload)
	if name == "exec" {
		select {
		case <-c.clientClosed:
		case <-time.After(time.Second):
		}
	}
	return ok, err
}

// TestBridgeReplyBeforeClose: a command that runs and ends before the
// gateway has passed the VPS's reply to exec on must not close the
// client's channel first: the client's exec would fail (x/crypto: EOF)
// although the command ran and its output and exit status arrived.
func TestBridgeReplyBeforeClose(t *testing.T) {
	client, gwDown := openTestChannel(t, "session")
	gwUp, vps := openTestChannel(t, "session")
	clientClosed := make(chan struct{})
	exits := make(chan string, 4)
	go func() {
		defer close(clientClosed)
		for req := range client.reqs {
			if req.Type == "exit-status" && len(req.Payload) == 4 {
				exits <- fmt.Sprint(req.Payload[3])
			}
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}()
	go func() {
		for req := range vps.reqs {
			if req.Type != "exec" {
				_ = req.Reply(false, nil)
				continue
			}
			_ = req.Reply(true, nil)
			_, _ = vps.ch.Write([]byte("ran\n"))
			_, _ = vps.ch.SendRequest("exit-status", false, []byte{0, 0, 0, 0})
			_ = vps.ch.CloseWrite()
			_ = vps.ch.Close()
		}
	}()
	toVPS, toClient := pairTaps(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		bridge(gwDown.ch, gwDown.reqs, replyAfterClientClose{gwUp.ch, clientClosed}, gwUp.reqs, &toVPS, &toClient)
	}()

	ok, err := client.ch.SendRequest("exec", true, gossh.Marshal(struct{ Command string }{"true"}))
	if !ok || err != nil {
		t.Fatalf("exec: ok %v, err %v; want the VPS's yes", ok, err)
	}
	if got := readAllWithin(t, "client stdout", client.ch); got != "ran\n" {
		t.Fatalf("client stdout %q", got)
	}
	if got := within(t, "exit status", func() string { return <-exits }); got != "0" {
		t.Fatalf("exit status %s", got)
	}
	_ = client.ch.Close()
	within(t, "bridge to return", func() struct{} { <-done; return struct{}{} })
}
