package relay

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
)

// fuzzNow is the fixed clock of FuzzRelayHandshake, so that signed seeds in
// testdata stay valid: they were signed at this time with testToken.
var fuzzNow = time.Unix(1_800_000_000, 0)

// FuzzRelayHandshake feeds arbitrary bytes as the start of a connection to
// a Handler behind NewHTTPServer. It must not panic, and it must never
// resolve a target or answer 101 unless the bytes hold a request signed
// with the token (which the fuzzer cannot forge: only seeds have one), nor
// hand a socket over (the listener is not a unix socket).
func FuzzRelayHandshake(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	targets := &fakeTargets{addrs: map[string]string{taskA: startTarget(f, echo)}}
	v, err := clusterauth.NewVerifier(testToken, clusterauth.WithNow(func() time.Time { return fuzzNow }))
	if err != nil {
		f.Fatal(err)
	}
	h, err := NewHandler(v, targets, nil, WithDialTimeout(time.Second), WithHandshakeTimeout(time.Second))
	if err != nil {
		f.Fatal(err)
	}
	ln := newChanListener()
	srv := NewHTTPServer(h, nil)
	srv.ReadHeaderTimeout = time.Second
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	f.Cleanup(func() { srv.Close(); <-done; h.Close() })

	f.Fuzz(func(t *testing.T, input []byte) {
		before := len(targets.lookups())
		c := newFuzzConn(input)
		ln.conns <- c
		select {
		case <-c.closed:
		case <-time.After(10 * time.Second):
			t.Fatal("connection not closed")
		}
		resolved := len(targets.lookups()) > before
		upgraded := bytes.HasPrefix(c.output(), []byte("HTTP/1.1 101 "))
		if (resolved || upgraded) && !validlySigned(input) {
			t.Fatalf("relay (resolved %v, upgraded %v) without a valid signature for %q", resolved, upgraded, input)
		}
		// This listener is not a unix socket: a handoff is never served
		// here, signed or not, nor does asking for one dial anything.
		if (resolved && asksHandoff(input)) || (upgraded && bytes.Contains(c.output(), []byte(HandoffProtocol))) {
			t.Fatalf("handoff served on a non-local conn (resolved %v, upgraded %v) for %q", resolved, upgraded, input)
		}
	})
}

// asksHandoff reports whether input starts with a request whose Upgrade
// header names HandoffProtocol.
func asksHandoff(input []byte) bool {
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(input)))
	return err == nil && headerHasToken(r.Header, "Upgrade", HandoffProtocol)
}

// validlySigned reports whether input starts with a request that a fresh
// Verifier (same token and clock, empty nonce cache) accepts.
func validlySigned(input []byte) bool {
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(input)))
	if err != nil {
		return false
	}
	v, err := clusterauth.NewVerifier(testToken, clusterauth.WithNow(func() time.Time { return fuzzNow }))
	if err != nil {
		panic(err) // constant arguments
	}
	return v.Verify(r, nil) == nil
}

// fuzzSeeds returns the table cases of TestHandlerRefuses and a valid
// request, signed at fuzzNow (the files in testdata/fuzz hold the same
// kinds of input).
func fuzzSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	add := func(token, method, target string, headers []string) {
		seeds = append(seeds, signedRequestAt(tb, token, method, target, headers, fuzzNow))
	}
	add(testToken, "GET", PathPrefix+taskA, upgradeHeaders)
	add(testToken, "GET", PathPrefix+taskB, upgradeHeaders)
	add("", "GET", PathPrefix+taskA, upgradeHeaders)
	add("another-token-0123456789abcdef", "GET", PathPrefix+taskA, upgradeHeaders)
	add(testToken, "GET", PathPrefix+"../../x", upgradeHeaders)
	add(testToken, "GET", PathPrefix+taskA+":22", upgradeHeaders)
	add(testToken, "POST", PathPrefix+taskA, upgradeHeaders)
	add(testToken, "GET", PathPrefix+taskA, nil)
	add(testToken, "GET", PathPrefix+taskA, []string{"Connection: Upgrade", "Upgrade: " + HandoffProtocol})
	seeds = append(seeds, []byte("GET / HTTP/1.1\r\n\r\n"), []byte("\x00\xff"), []byte("SSH-2.0-OpenSSH_9.2\r\n"))
	return seeds
}

// signedRequestAt is signedRequest with the signature made at now.
func signedRequestAt(tb testing.TB, token, method, target string, headers []string, now time.Time) []byte {
	tb.Helper()
	raw := signedRequest(tb, "", method, target, headers, nil)
	if token == "" {
		return raw
	}
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		tb.Fatal(err)
	}
	clusterauth.SignAt(r, token, nil, now)
	auth := "Authorization: " + r.Header.Get("Authorization") + "\r\n\r\n"
	return append(bytes.TrimSuffix(raw, []byte("\r\n")), auth...)
}

// chanListener hands out the conns sent on its channel.
type chanListener struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return fuzzAddr{} }

// fuzzConn is an in-memory client conn that sends input. Once the input
// is consumed, a read returns EOF right away if the input cannot hold a
// complete header; otherwise it waits like a live client until the server
// has written something (then EOF), the conn is closed, or a deadline in the
// past is set (net/http does that to stop its background read when the
// handler hijacks). Future deadlines are ignored: no read waits on one.
type fuzzConn struct {
	mu        sync.Mutex
	cond      *sync.Cond
	in        *bytes.Reader
	wait      bool // the input may hold a complete request header
	out       bytes.Buffer
	wrote     bool
	expired   bool // a read deadline in the past is set
	closed    chan struct{}
	closeOnce sync.Once
}

func newFuzzConn(input []byte) *fuzzConn {
	c := &fuzzConn{
		in:     bytes.NewReader(input),
		wait:   bytes.Contains(input, []byte("\n\n")) || bytes.Contains(input, []byte("\n\r\n")),
		closed: make(chan struct{}),
	}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *fuzzConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

func (c *fuzzConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.isClosed():
			return 0, net.ErrClosed
		case c.in.Len() > 0:
			return c.in.Read(p)
		case c.expired:
			return 0, os.ErrDeadlineExceeded
		case c.wrote || !c.wait:
			return 0, io.EOF
		}
		c.cond.Wait()
	}
}

func (c *fuzzConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isClosed() {
		return 0, net.ErrClosed
	}
	c.wrote = true
	c.cond.Broadcast()
	return c.out.Write(p)
}

func (c *fuzzConn) output() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

func (c *fuzzConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isClosed() {
		return net.ErrClosed
	}
	c.closeOnce.Do(func() { close(c.closed) })
	c.cond.Broadcast()
	return nil
}

func (c *fuzzConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expired = !t.IsZero() && !t.After(time.Now())
	c.cond.Broadcast()
	return nil
}

func (c *fuzzConn) SetDeadline(t time.Time) error    { return c.SetReadDeadline(t) }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return fuzzAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return fuzzAddr{} }

type fuzzAddr struct{}

func (fuzzAddr) Network() string { return "fuzz" }
func (fuzzAddr) String() string  { return "fuzz:0" }
