package clusterauth

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testToken = "test-cluster-token-0123456789abcdef"

var t0 = time.Unix(1_800_000_000, 0)

// clock is a settable now func for Verifiers under test.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestVerifier(t *testing.T, c *clock, opts ...Option) *Verifier {
	t.Helper()
	v, err := NewVerifier(testToken, append([]Option{WithNow(c.now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func newReq(t *testing.T, method, url string, body []byte) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// setParam rewrites one parameter of r's Authorization header.
func setParam(r *http.Request, key, val string) {
	h := r.Header.Get("Authorization")
	scheme, params, _ := strings.Cut(h, " ")
	parts := strings.Split(params, ",")
	for i, p := range parts {
		if strings.HasPrefix(p, key+"=") {
			parts[i] = key + "=" + val
		}
	}
	r.Header.Set("Authorization", scheme+" "+strings.Join(parts, ","))
}

func TestSignVerifyRoundTrip(t *testing.T) {
	tests := []struct {
		name, method, url string
		body              []byte
	}{
		{"get", "GET", "http://agent:8001/v1/relay/1234567890123456789", nil},
		{"post body", "POST", "http://agent:8001/v1/vps", []byte(`{"task_id":"1"}`)},
		{"query", "DELETE", "http://agent:8001/v1/vps/1?force=1&x=%2F", nil},
		{"escaped path", "GET", "http://agent/a%2Fb/c%20d", nil},
		{"empty method is GET", "", "http://agent/x", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t0}
			v := newTestVerifier(t, c)
			out := newReq(t, tt.method, tt.url, tt.body)
			out.Method = tt.method
			SignAt(out, testToken, tt.body, t0)
			// What the receiver sees: the request as written on the wire.
			in := wireCopy(t, out)
			if err := v.Verify(in, tt.body); err != nil {
				t.Fatalf("Verify = %v", err)
			}
		})
	}
}

// wireCopy writes r in HTTP/1.1 wire form and parses it back, as a server would.
func wireCopy(t *testing.T, r *http.Request) *http.Request {
	t.Helper()
	var buf bytes.Buffer
	if err := r.Write(&buf); err != nil {
		t.Fatal(err)
	}
	in, err := http.ReadRequest(bufioReader(&buf))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestVerifyRejects(t *testing.T) {
	body := []byte(`{"cores":2}`)
	tests := []struct {
		name   string
		mutate func(r *http.Request, body *[]byte, c *clock)
		want   error
	}{
		{"method", func(r *http.Request, _ *[]byte, _ *clock) { r.Method = "DELETE" }, ErrBadSignature},
		{"path", func(r *http.Request, _ *[]byte, _ *clock) { r.URL.Path = "/v1/vps/2" }, ErrBadSignature},
		{"query", func(r *http.Request, _ *[]byte, _ *clock) { r.URL.RawQuery = "force=1" }, ErrBadSignature},
		{"body", func(_ *http.Request, b *[]byte, _ *clock) { *b = []byte(`{"cores":64}`) }, ErrBadSignature},
		{"no body", func(_ *http.Request, b *[]byte, _ *clock) { *b = nil }, ErrBadSignature},
		{"ts edited", func(r *http.Request, _ *[]byte, _ *clock) { setParam(r, "ts", "1800000001") }, ErrBadSignature},
		{"nonce edited", func(r *http.Request, _ *[]byte, _ *clock) {
			setParam(r, "nonce", strings.Repeat("ab", 16))
		}, ErrBadSignature},
		{"sig edited", func(r *http.Request, _ *[]byte, _ *clock) { setParam(r, "sig", strings.Repeat("0", 64)) }, ErrBadSignature},
		{"wrong token", func(r *http.Request, b *[]byte, _ *clock) {
			SignAt(r, "another-token-of-enough-length", *b, t0)
		}, ErrBadSignature},
		{"expired", func(_ *http.Request, _ *[]byte, c *clock) { c.t = t0.Add(61 * time.Second) }, ErrExpired},
		{"from the future", func(_ *http.Request, _ *[]byte, c *clock) { c.t = t0.Add(-61 * time.Second) }, ErrExpired},
		{"missing", func(r *http.Request, _ *[]byte, _ *clock) { r.Header.Del("Authorization") }, ErrMissing},
		{"other scheme", func(r *http.Request, _ *[]byte, _ *clock) { r.Header.Set("Authorization", "Bearer "+testToken) }, ErrMissing},
		{"no params", func(r *http.Request, _ *[]byte, _ *clock) { r.Header.Set("Authorization", Scheme) }, ErrMalformed},
		{"missing sig", func(r *http.Request, _ *[]byte, _ *clock) {
			r.Header.Set("Authorization", Scheme+" ts=1800000000,nonce="+strings.Repeat("0", 32))
		}, ErrMalformed},
		{"duplicate ts", func(r *http.Request, _ *[]byte, _ *clock) {
			r.Header.Set("Authorization", r.Header.Get("Authorization")+",ts=1800000000")
		}, ErrMalformed},
		{"short nonce", func(r *http.Request, _ *[]byte, _ *clock) { setParam(r, "nonce", "abcd") }, ErrMalformed},
		{"non-hex nonce", func(r *http.Request, _ *[]byte, _ *clock) { setParam(r, "nonce", strings.Repeat("zz", 16)) }, ErrMalformed},
		{"negative ts", func(r *http.Request, _ *[]byte, _ *clock) { setParam(r, "ts", "-5") }, ErrMalformed},
		{"huge header", func(r *http.Request, _ *[]byte, _ *clock) {
			r.Header.Set("Authorization", r.Header.Get("Authorization")+strings.Repeat(" ", 600))
		}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t0}
			v := newTestVerifier(t, c)
			b := bytes.Clone(body)
			r := newReq(t, "PUT", "http://agent/v1/vps/1", b)
			SignAt(r, testToken, b, t0)
			tt.mutate(r, &b, c)
			if err := v.Verify(r, b); !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestVerifyEdgeOfWindow(t *testing.T) {
	for _, d := range []time.Duration{-60 * time.Second, 60 * time.Second} {
		c := &clock{t0.Add(d)}
		v := newTestVerifier(t, c)
		r := newReq(t, "GET", "http://agent/x", nil)
		SignAt(r, testToken, nil, t0)
		if err := v.Verify(r, nil); err != nil {
			t.Errorf("skew %s: Verify = %v, want nil", d, err)
		}
	}
}

func TestVerifyReplay(t *testing.T) {
	c := &clock{t0}
	v := newTestVerifier(t, c)
	r := newReq(t, "GET", "http://agent/v1/relay/1234567890123456789", nil)
	SignAt(r, testToken, nil, t0)
	if err := v.Verify(r, nil); err != nil {
		t.Fatalf("first Verify = %v", err)
	}
	c.t = t0.Add(30 * time.Second)
	if err := v.Verify(r, nil); !errors.Is(err, ErrReplayed) {
		t.Fatalf("second Verify = %v, want ErrReplayed", err)
	}
	// Past the window the capture is refused as expired, never accepted.
	c.t = t0.Add(61 * time.Second)
	if err := v.Verify(r, nil); !errors.Is(err, ErrExpired) {
		t.Fatalf("late Verify = %v, want ErrExpired", err)
	}
	// An invalid signature must not consume the nonce of a later valid one.
	c.t = t0
	v2 := newTestVerifier(t, c)
	good := newReq(t, "GET", "http://agent/x", nil)
	SignAt(good, testToken, nil, t0)
	forged := good.Clone(good.Context())
	forged.Method = "POST"
	if err := v2.Verify(forged, nil); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("forged Verify = %v", err)
	}
	if err := v2.Verify(good, nil); err != nil {
		t.Fatalf("good Verify after forged = %v", err)
	}
}

func TestNonceCacheCap(t *testing.T) {
	c := &clock{t0}
	v := newTestVerifier(t, c, WithMaxNonces(3))
	sign := func(at time.Time) *http.Request {
		r := newReq(t, "GET", "http://agent/x", nil)
		SignAt(r, testToken, nil, at)
		return r
	}
	for i := range 3 {
		if err := v.Verify(sign(t0), nil); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if err := v.Verify(sign(t0), nil); !errors.Is(err, ErrNonceCacheFull) {
		t.Fatalf("fourth request = %v, want ErrNonceCacheFull", err)
	}
	// Once the first three can no longer be replayed they are forgotten.
	c.t = t0.Add(DefaultWindow + time.Second)
	if err := v.Verify(sign(c.t), nil); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if n := len(v.seen); n != 1 {
		t.Fatalf("cache holds %d entries, want 1", n)
	}
}

func TestNewVerifierOptions(t *testing.T) {
	tests := []struct {
		name    string
		token   string
		opts    []Option
		wantErr bool
	}{
		{"ok", testToken, nil, false},
		{"empty token", "", nil, true},
		{"short token", "secret", nil, true},
		{"nil now", testToken, []Option{WithNow(nil)}, true},
		{"tiny window", testToken, []Option{WithWindow(time.Millisecond)}, true},
		{"zero cache", testToken, []Option{WithMaxNonces(0)}, true},
		{"custom", testToken, []Option{WithWindow(time.Minute * 2), WithMaxNonces(10)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewVerifier(tt.token, tt.opts...)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && tt.token != "" && strings.Contains(err.Error(), tt.token) {
				t.Fatalf("error %q contains the token", err)
			}
		})
	}
}

func TestNewToken(t *testing.T) {
	a, b := NewToken(), NewToken()
	if a == b {
		t.Fatal("two tokens are equal")
	}
	rest, ok := strings.CutPrefix(a, "krt_")
	if !ok {
		t.Fatalf("token %q lacks the krt_ prefix (which keeps it from starting with -)", a)
	}
	raw, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(raw) != 32 {
		t.Fatalf("token %q: %d bytes, err %v", a, len(raw), err)
	}
	if _, err := NewVerifier(a); err != nil {
		t.Fatalf("NewVerifier(NewToken()) = %v", err)
	}
}
