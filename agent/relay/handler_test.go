package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
)

func newReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

var upgradeHeaders = []string{"Connection: Upgrade", "Upgrade: " + Protocol}

// signedRequest renders a raw HTTP/1.1 request for target (sent verbatim on
// the request line), signed with token unless token is empty.
func signedRequest(t testing.TB, token, method, target string, headers []string, body []byte) []byte {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: agent\r\n", method, target)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if token != "" {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			t.Fatalf("target %q: %v", target, err)
		}
		r := &http.Request{Method: method, URL: u, Header: http.Header{}}
		clusterauth.Sign(r, token, body)
		b.WriteString("Authorization: " + r.Header.Get("Authorization") + "\r\n")
	}
	if body != nil {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return []byte(b.String())
}

// exchange sends raw to addr and returns the answer's status and error
// message.
func exchange(t *testing.T, addr string, raw []byte) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(newReader(c), nil)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	defer resp.Body.Close()
	var e errorBody
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &e)
	if e.Error == "" {
		e.Error = string(b)
	}
	return resp.StatusCode, e.Error
}

// TestHandlerRefuses checks that malformed or unauthenticated requests are
// refused before the handler resolves (let alone dials) anything.
func TestHandlerRefuses(t *testing.T) {
	relay := func(id string) string { return PathPrefix + id }
	tests := []struct {
		name       string
		token      string
		method     string
		target     string
		headers    []string
		body       []byte // signed and sent
		unsigned   string // sent after the request, not signed
		wantStatus int
		wantMsg    string
	}{
		{"unsigned", "", "GET", relay(taskA), upgradeHeaders, nil, "", 401, "missing cluster authorization"},
		{"wrong token", "another-token-0123456789abcdef", "GET", relay(taskA), upgradeHeaders, nil, "", 401, "bad signature"},
		{"dot-dot", testToken, "GET", relay("../../x"), upgradeHeaders, nil, "", 400, "19-digit"},
		{"dot-dot after id", testToken, "GET", relay(taskA + "/../" + taskB), upgradeHeaders, nil, "", 400, "19-digit"},
		{"short id", testToken, "GET", relay("123"), upgradeHeaders, nil, "", 400, "19-digit"},
		{"20 digits", testToken, "GET", relay(taskA + "0"), upgradeHeaders, nil, "", 400, "19-digit"},
		{"leading zero", testToken, "GET", relay("0" + taskA[1:]), upgradeHeaders, nil, "", 400, "19-digit"},
		{"junk suffix", testToken, "GET", relay(taskA + "x"), upgradeHeaders, nil, "", 400, "19-digit"},
		{"host:port junk", testToken, "GET", relay(taskA + ":22"), upgradeHeaders, nil, "", 400, "19-digit"},
		{"extra segment", testToken, "GET", relay(taskA + "/x"), upgradeHeaders, nil, "", 400, "19-digit"},
		{"percent-encoded", testToken, "GET", relay("%31" + taskA[1:]), upgradeHeaders, nil, "", 400, "19-digit"},
		{"other prefix", testToken, "GET", "/v1/relays/" + taskA, upgradeHeaders, nil, "", 400, "19-digit"},
		{"post", testToken, "POST", relay(taskA), upgradeHeaders, nil, "", 405, "GET"},
		{"no upgrade", testToken, "GET", relay(taskA), nil, nil, "", 426, Protocol},
		{"websocket", testToken, "GET", relay(taskA), []string{"Connection: Upgrade", "Upgrade: websocket"}, nil, "", 426, Protocol},
		{"body", testToken, "GET", relay(taskA), append([]string{"Content-Length: 4"}, upgradeHeaders...), nil, "abcd", 400, "no body"},
		{"signed body", testToken, "GET", relay(taskA), upgradeHeaders, []byte("abcd"), "", 401, "bad signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := startAgent(t, &fakeTargets{addrs: map[string]string{taskA: closedAddr(t), taskB: closedAddr(t)}}, nil)
			raw := append(signedRequest(t, tt.token, tt.method, tt.target, tt.headers, tt.body), tt.unsigned...)
			status, msg := exchange(t, a.addr, raw)
			if status != tt.wantStatus || !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("got %d %q, want %d containing %q", status, msg, tt.wantStatus, tt.wantMsg)
			}
			if l := a.targets.lookups(); len(l) != 0 {
				t.Errorf("handler looked up %q", l)
			}
		})
	}
}

func TestHandlerRefusesReplay(t *testing.T) {
	target := startTarget(t, echo)
	a := startAgent(t, &fakeTargets{addrs: map[string]string{taskA: target}}, nil)
	req := signedRequest(t, testToken, "GET", PathPrefix+taskA, upgradeHeaders, nil)
	if status, msg := exchange(t, a.addr, req); status != http.StatusSwitchingProtocols {
		t.Fatalf("first: %d %q", status, msg)
	}
	if status, msg := exchange(t, a.addr, req); status != http.StatusUnauthorized || !strings.Contains(msg, "replayed") {
		t.Fatalf("replay: %d %q", status, msg)
	}
	if l := a.targets.lookups(); len(l) != 1 {
		t.Fatalf("lookups %q, want one", l)
	}
}

func TestDialErrors(t *testing.T) {
	echoAddr := startTarget(t, echo)
	targets := &fakeTargets{
		addrs: map[string]string{taskA: echoAddr, taskB: closedAddr(t)},
		errs: map[string]error{
			"2000000000000000001": fmt.Errorf("container kohakuriver-vps-2000000000000000001 exited: %w", ErrNotRunning),
			"2000000000000000002": errors.New("docker: daemon not answering"),
		},
	}
	a := startAgent(t, targets, nil)
	// silent accepts and never answers; notAgent answers like a plain web server.
	silent := startTarget(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	notAgent := startTarget(t, func(c *net.TCPConn) {
		http.ReadRequest(newReader(c))
		io.WriteString(c, "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\r\n404 page not found\n")
	})
	tests := []struct {
		name    string
		token   string
		agent   string
		task    string
		timeout time.Duration
		want    error
		wantMsg string
	}{
		{"wrong token", "another-token-0123456789abcdef", a.addr, taskA, 0, ErrUnauthorized, "bad signature"},
		{"unknown vps", testToken, a.addr, "1999999999999999999", 0, ErrUnknownVPS, "no vps 1999999999999999999 on this node"},
		{"not running", testToken, a.addr, "2000000000000000001", 0, ErrNotRunning, "is not running"},
		{"lookup failed", testToken, a.addr, "2000000000000000002", 0, ErrRefused, "could not look up"},
		{"sshd down", testToken, a.addr, taskB, 0, ErrUnreachable, "not reachable"},
		{"agent down", testToken, closedAddr(t), taskA, 0, ErrAgentUnreachable, "refused"},
		{"agent silent", testToken, silent, taskA, 300 * time.Millisecond, ErrAgentUnreachable, "deadline exceeded"},
		{"not an agent", testToken, notAgent, taskA, 0, ErrRefused, "no relay endpoint"},
		{"bad task id", testToken, a.addr, "../../etc", 0, ErrBadRequest, "19 digits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Dialer{Token: tt.token, Timeout: tt.timeout}
			c, err := d.Dial(t.Context(), tt.agent, tt.task)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Dial = %q, want %v containing %q", err, tt.want, tt.wantMsg)
			}
			if strings.Contains(err.Error(), "docker") || strings.Contains(err.Error(), "exited") {
				t.Fatalf("Dial error %q leaks the agent's internal detail", err)
			}
		})
	}
}

func TestDialCancel(t *testing.T) {
	silent := startTarget(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	ctx, cancel := context.WithCancel(t.Context())
	stop := time.AfterFunc(100*time.Millisecond, cancel)
	defer stop.Stop()
	start := time.Now()
	_, err := (&Dialer{Token: testToken}).Dial(ctx, silent, taskA)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrAgentUnreachable) {
		t.Fatalf("Dial = %v, want context.Canceled and ErrAgentUnreachable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("cancelled Dial took %s", d)
	}
}

// TestServerLimits checks NewHTTPServer's handshake limits: a stalled
// request is dropped, an oversized header refused.
func TestServerLimits(t *testing.T) {
	a := startAgent(t, &fakeTargets{}, func(s *http.Server) { s.ReadHeaderTimeout = 200 * time.Millisecond })
	t.Run("stalled header", func(t *testing.T) {
		c, err := net.Dial("tcp", a.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET "+PathPrefix+taskA+" HTTP/1.1\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("agent kept a stalled handshake open")
		}
	})
	t.Run("huge header", func(t *testing.T) {
		req := signedRequest(t, testToken, "GET", PathPrefix+taskA,
			append([]string{"X-Pad: " + strings.Repeat("a", 2*MaxHeaderBytes)}, upgradeHeaders...), nil)
		if status, _ := exchange(t, a.addr, req); status != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d, want 431", status)
		}
	})
}

// TestMountedOnMux serves the Handler from a mux next to other endpoints,
// as the agent does.
func TestMountedOnMux(t *testing.T) {
	targets := &fakeTargets{addrs: map[string]string{taskA: startTarget(t, echo)}}
	v, err := clusterauth.NewVerifier(testToken)
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(v, targets, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(Pattern, h)
	srv := NewHTTPServer(mux, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done; h.Close() })

	c := dial(t, ln.Addr().String(), taskA)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "x")
	c.(*Conn).CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "x" {
		t.Fatalf("echo %q, %v", b, err)
	}
	status, _ := exchange(t, ln.Addr().String(), signedRequest(t, testToken, "GET", PathPrefix+"../../x", upgradeHeaders, nil))
	if status == http.StatusSwitchingProtocols {
		t.Fatal("dot-dot path upgraded")
	}
	if l := targets.lookups(); len(l) != 1 {
		t.Fatalf("lookups %q, want only the valid one", l)
	}
}

func TestNewHandlerOptions(t *testing.T) {
	v, err := clusterauth.NewVerifier(testToken)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		v       *clusterauth.Verifier
		targets Targets
		opts    []Option
		wantErr bool
	}{
		{"defaults", v, &fakeTargets{}, nil, false},
		{"nil verifier", nil, &fakeTargets{}, nil, true},
		{"nil targets", v, nil, nil, true},
		{"zero relays", v, &fakeTargets{}, []Option{WithMaxRelays(0)}, true},
		{"zero dial timeout", v, &fakeTargets{}, []Option{WithDialTimeout(0)}, true},
		{"zero handshake timeout", v, &fakeTargets{}, []Option{WithHandshakeTimeout(0)}, true},
		{"custom", v, &fakeTargets{}, []Option{WithMaxRelays(1), WithDialTimeout(time.Second), WithHandshakeTimeout(time.Second)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := NewHandler(tt.v, tt.targets, nil, tt.opts...)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if h != nil {
				h.Close()
			}
		})
	}
}
