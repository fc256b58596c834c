package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(envListenAs); path != "" {
		os.Exit(listenAsChild(path))
	}
	goleak.VerifyTestMain(m)
}

const (
	testToken = "relay-test-token-0123456789abcdef"
	taskA     = "1234567890123456789"
	taskB     = "1234567890123456790"
)

// fakeTargets resolves task ids from maps and records every lookup.
type fakeTargets struct {
	mu     sync.Mutex
	addrs  map[string]string
	errs   map[string]error
	block  chan struct{} // if non-nil, SSHAddr signals here and waits for ctx
	lookup []string
}

var _ Targets = (*fakeTargets)(nil)

func (f *fakeTargets) SSHAddr(ctx context.Context, taskID string) (string, error) {
	f.mu.Lock()
	f.lookup = append(f.lookup, taskID)
	addr, err, block := f.addrs[taskID], f.errs[taskID], f.block
	f.mu.Unlock()
	if block != nil {
		block <- struct{}{}
		<-ctx.Done()
		return "", ctx.Err()
	}
	if err != nil {
		return "", err
	}
	if addr == "" {
		return "", fmt.Errorf("task %s: %w", taskID, ErrUnknownVPS)
	}
	return addr, nil
}

func (f *fakeTargets) lookups() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lookup...)
}

// lockedBuffer collects logs from goroutines that may outlive a test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type testAgent struct {
	addr    string
	h       *Handler
	targets *fakeTargets
	logs    *lockedBuffer
}

// startAgent serves a Handler over targets on 127.0.0.1:0 from
// NewHTTPServer, after cfg (if any) adjusts the server.
func startAgent(t *testing.T, targets *fakeTargets, cfg func(*http.Server), opts ...Option) *testAgent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveAgent(t, ln, targets, cfg, opts...)
}

// serveAgentWith is startAgent for any Targets.
func serveAgentWith(t *testing.T, targets Targets, opts ...Option) *testAgent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveAgent(t, ln, targets, nil, opts...)
}

// serveAgent serves a Handler over targets on ln until the test ends.
func serveAgent(t *testing.T, ln net.Listener, targets Targets, cfg func(*http.Server), opts ...Option) *testAgent {
	t.Helper()
	v, err := clusterauth.NewVerifier(testToken)
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, err := NewHandler(v, targets, logger, opts...)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewHTTPServer(h, logger)
	if cfg != nil {
		cfg(srv)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
		h.Close()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	fake, _ := targets.(*fakeTargets)
	return &testAgent{addr: ln.Addr().String(), h: h, targets: fake, logs: logs}
}

// startTarget runs serve for each connection to a new 127.0.0.1:0 listener,
// standing in for a VPS's sshd. Cleanup closes the listener and every conn
// and waits for the serve calls.
func startTarget(t testing.TB, serve func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echo sends back everything it reads, then half-closes.
func echo(c *net.TCPConn) {
	buf := make([]byte, 64<<10)
	io.CopyBuffer(writerOnly{c}, readerOnly{c}, buf)
	c.CloseWrite()
}

// closedAddr returns an address on which nothing listens.
func closedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func dial(t *testing.T, agentAddr, taskID string) net.Conn {
	t.Helper()
	d := &Dialer{Token: testToken, Timeout: 5 * time.Second}
	c, err := d.Dial(t.Context(), agentAddr, taskID)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stream returns n deterministic pseudo-random bytes.
func stream(seed byte, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), n)
}

func sumOf(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return [32]byte(h.Sum(nil)), n, err
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		size int64
	}{
		{"empty", 0},
		{"one byte", 1},
		{"32 MiB", 32 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The target consumes the client's stream (seed 1) while it
			// sends its own (seed 2): both directions at once, each ending
			// in a half-close.
			gotUp := make(chan [32]byte, 1)
			target := startTarget(t, func(c *net.TCPConn) {
				var wg sync.WaitGroup
				wg.Go(func() {
					sum, _, _ := sumOf(c)
					gotUp <- sum
				})
				io.Copy(c, stream(2, tt.size))
				c.CloseWrite()
				wg.Wait()
			})
			a := startAgent(t, &fakeTargets{addrs: map[string]string{taskA: target}}, nil)
			c := dial(t, a.addr, taskA)

			writeErr := make(chan error, 1)
			go func() {
				_, err := io.Copy(c, stream(1, tt.size))
				if err == nil {
					err = c.(*Conn).CloseWrite()
				}
				writeErr <- err
			}()
			down, n, err := sumOf(c)
			if err != nil {
				t.Fatalf("read: %v after %d bytes", err, n)
			}
			if err := <-writeErr; err != nil {
				t.Fatalf("write: %v", err)
			}
			wantUp, _, _ := sumOf(stream(1, tt.size))
			wantDown, _, _ := sumOf(stream(2, tt.size))
			if n != tt.size || down != wantDown {
				t.Errorf("target->client: %d bytes, checksum match %v; want %d bytes", n, down == wantDown, tt.size)
			}
			if up := <-gotUp; up != wantUp {
				t.Errorf("client->target checksum differs")
			}
		})
	}
}

func TestEchoRoundTrip(t *testing.T) {
	const size = 32 << 20
	a := startAgent(t, &fakeTargets{addrs: map[string]string{taskA: startTarget(t, echo)}}, nil)
	c := dial(t, a.addr, taskA)
	writeErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, stream(3, size))
		if err == nil {
			err = c.(*Conn).CloseWrite()
		}
		writeErr <- err
	}()
	got, n, err := sumOf(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	want, _, _ := sumOf(stream(3, size))
	if n != size || got != want {
		t.Fatalf("echoed %d bytes (checksum match %v), want %d", n, got == want, size)
	}
}

// TestHalfClose pins SSH's EOF semantics across the hop: the client's
// CloseWrite reaches the target as EOF, and the target's answer after that
// still reaches the client.
func TestHalfClose(t *testing.T) {
	target := startTarget(t, func(c *net.TCPConn) {
		b, err := io.ReadAll(c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %q then EOF", b)
	})
	a := startAgent(t, &fakeTargets{addrs: map[string]string{taskA: target}}, nil)
	c := dial(t, a.addr, taskA)
	if _, err := io.WriteString(c, "exit-status 0"); err != nil {
		t.Fatal(err)
	}
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite", c)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := `got "exit-status 0" then EOF`; string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestEarlyBytes checks bytes that travel with the handshake in either
// direction: the client's, sent right behind its request (buffered by
// net/http on the agent), and the target's banner, read by the Dialer
// together with the 101.
func TestEarlyBytes(t *testing.T) {
	t.Run("client to target", func(t *testing.T) {
		a := startAgent(t, &fakeTargets{addrs: map[string]string{taskA: startTarget(t, echo)}}, nil)
		c, err := net.Dial("tcp", a.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req := signedRequest(t, testToken, "GET", PathPrefix+taskA, upgradeHeaders, nil)
		if _, err := c.Write(append(req, "SSH-2.0-early\r\n"...)); err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := newReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("answer %v, %v", resp, err)
		}
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(br)
		if err != nil || string(got) != "SSH-2.0-early\r\n" {
			t.Fatalf("echo %q, %v", got, err)
		}
	})
	t.Run("target to client", func(t *testing.T) {
		// A fake agent whose 101 and banner arrive in one segment.
		fake := startTarget(t, func(c *net.TCPConn) {
			req, err := http.ReadRequest(newReader(c))
			if err != nil || req.Header.Get("Authorization") == "" {
				return
			}
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+Protocol+"\r\n\r\nSSH-2.0-banner\r\n")
			c.CloseWrite()
			io.Copy(io.Discard, c)
		})
		c := dial(t, fake, taskA)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "SSH-2.0-banner\r\n" {
			t.Fatalf("read %q, %v", got, err)
		}
	})
}

func TestCloseEndsRelays(t *testing.T) {
	t.Run("live relay", func(t *testing.T) {
		a := startAgent(t, &fakeTargets{addrs: map[string]string{taskA: startTarget(t, echo)}}, nil)
		c := dial(t, a.addr, taskA)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		if err := a.h.Close(); err != nil {
			t.Fatal(err)
		}
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("read %d bytes from a relay after Close", n)
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("relay still open after Close")
		}
		if a.h.Active() != 0 {
			t.Fatalf("Active() = %d after Close", a.h.Active())
		}
		_, err := (&Dialer{Token: testToken}).Dial(t.Context(), a.addr, taskA)
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("Dial after Close = %v, want ErrUnreachable", err)
		}
	})
	t.Run("resolving", func(t *testing.T) {
		block := make(chan struct{})
		a := startAgent(t, &fakeTargets{block: block}, nil)
		dialErr := make(chan error, 1)
		go func() {
			_, err := (&Dialer{Token: testToken}).Dial(context.Background(), a.addr, taskA)
			dialErr <- err
		}()
		<-block // the handler is inside SSHAddr
		if err := a.h.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-dialErr; err == nil {
			t.Fatal("Dial succeeded through a closed handler")
		}
	})
}

func TestConcurrencyLimit(t *testing.T) {
	a := startAgent(t, &fakeTargets{addrs: map[string]string{taskA: startTarget(t, echo)}}, nil, WithMaxRelays(2))
	c1 := dial(t, a.addr, taskA)
	dial(t, a.addr, taskA)
	_, err := (&Dialer{Token: testToken}).Dial(t.Context(), a.addr, taskA)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("third Dial = %v, want ErrUnreachable", err)
	}
	// The slot is released once the relay notices the close, asynchronously.
	c1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for a.h.Active() > 1 {
		if time.Now().After(deadline) {
			t.Fatalf("relay not released: Active() = %d", a.h.Active())
		}
		time.Sleep(5 * time.Millisecond)
	}
	dial(t, a.addr, taskA)
}

// TestBufferedCopy covers the path for conns the kernel cannot splice, and
// the full close used when a conn cannot half-close.
func TestBufferedCopy(t *testing.T) {
	a1, a2 := tcpPair(t)
	b1, b2 := tcpPair(t)
	type opaque struct{ net.Conn } // hides *net.TCPConn and CloseWrite
	done := make(chan error, 1)
	go func() {
		_, _, err := pipe(opaque{a2}, opaque{b1})
		done <- err
	}()
	const size = 4 << 20
	go func() {
		io.Copy(a1, stream(4, size))
		a1.(*net.TCPConn).CloseWrite()
	}()
	b2.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, n, err := sumOf(b2)
	want, _, _ := sumOf(stream(4, size))
	if err != nil || n != size || got != want {
		t.Fatalf("copied %d bytes (match %v), err %v", n, got == want, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("pipe: %v", err)
	}
}

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c1.Close(); c2.Close() })
	return c1, c2
}
