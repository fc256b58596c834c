package clusterauth

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

// echoBody answers 200 with the body it received.
var echoBody = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	w.Write(b)
})

func TestMiddleware(t *testing.T) {
	big := bytes.Repeat([]byte("x"), MaxBodySize+1)
	tests := []struct {
		name       string
		body       []byte
		sign       bool
		signedBody []byte // body used for the signature when different
		wantStatus int
		wantBody   string // substring of the answer
	}{
		{"signed", []byte("hello"), true, nil, http.StatusOK, "hello"},
		{"signed empty", nil, true, nil, http.StatusOK, ""},
		{"unsigned", []byte("hello"), false, nil, http.StatusUnauthorized, `"error":"missing cluster authorization"`},
		{"body swapped", []byte("hello"), true, []byte("other"), http.StatusUnauthorized, `"error":"bad signature"`},
		{"too large", big, true, nil, http.StatusRequestEntityTooLarge, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			v, err := NewVerifier(testToken)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(MiddlewareWithLogger(v, slog.New(slog.NewTextHandler(&logs, nil)), echoBody))
			t.Cleanup(srv.Close)
			r := newReq(t, "POST", srv.URL+"/v1/x?y=1", tt.body)
			if tt.sign {
				sb := tt.body
				if tt.signedBody != nil {
					sb = tt.signedBody
				}
				Sign(r, testToken, sb)
			}
			resp, err := srv.Client().Do(r)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || !strings.Contains(string(got), tt.wantBody) {
				t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, got, tt.wantStatus, tt.wantBody)
			}
			if resp.StatusCode != http.StatusOK {
				var e struct{ Error string }
				if err := json.Unmarshal(got, &e); err != nil || e.Error == "" {
					t.Fatalf("error body %q is not {\"error\":...}: %v", got, err)
				}
			}
			if strings.Contains(logs.String(), testToken) {
				t.Fatal("the log contains the token")
			}
		})
	}
}

func TestMiddlewareReplay(t *testing.T) {
	v, err := NewVerifier(testToken)
	if err != nil {
		t.Fatal(err)
	}
	h := Middleware(v, echoBody)
	r := newReq(t, "POST", "http://agent/v1/x", []byte("once"))
	Sign(r, testToken, []byte("once"))
	for i, want := range []int{http.StatusOK, http.StatusUnauthorized} {
		in := r.Clone(r.Context())
		in.Body = io.NopCloser(strings.NewReader("once"))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, in)
		if rec.Code != want {
			t.Fatalf("delivery %d: status %d, want %d (%s)", i, rec.Code, want, rec.Body)
		}
	}
}

func TestTransport(t *testing.T) {
	v, err := NewVerifier(testToken)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Middleware(v, echoBody))
	t.Cleanup(srv.Close)
	c := &http.Client{Transport: &Transport{Token: testToken, Base: srv.Client().Transport}, Timeout: 5 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	for _, body := range []string{"", "payload"} {
		resp, err := c.Post(srv.URL+"/v1/vps?x=1", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(got) != body {
			t.Fatalf("body %q: got %d %q", body, resp.StatusCode, got)
		}
	}
	// A wrong token is refused.
	bad := &http.Client{Transport: &Transport{Token: "not-the-cluster-token", Base: srv.Client().Transport}}
	t.Cleanup(bad.CloseIdleConnections)
	resp, err := bad.Get(srv.URL + "/v1/vps")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong token: status %d", resp.StatusCode)
	}
}

// FuzzVerify feeds arbitrary Authorization headers, methods and targets to
// Verify: it must not panic and must never accept what was not signed with
// the token.
func FuzzVerify(f *testing.F) {
	good := newReqF(f, "GET", "http://agent/v1/relay/1234567890123456789")
	SignAt(good, testToken, nil, t0)
	f.Add(good.Header.Get("Authorization"), "GET", "/v1/relay/1234567890123456789", []byte(nil))
	f.Add(good.Header.Get("Authorization"), "POST", "/v1/relay/1234567890123456789", []byte("x"))
	f.Add(Scheme+" ts=1,nonce=00,sig=00", "GET", "/", []byte(nil))
	f.Add("Bearer x", "GET", "/", []byte(nil))
	f.Add(Scheme+" ts=1800000000,nonce="+strings.Repeat("A", 32)+",sig="+strings.Repeat("f", 64), "GET", "/x?y", []byte{})
	f.Fuzz(func(t *testing.T, auth, method, target string, body []byte) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " " + target + " HTTP/1.1\r\nHost: a\r\n\r\n")))
		if err != nil {
			return
		}
		r.Header.Set("Authorization", auth)
		c := &clock{t0}
		v, err := NewVerifier(testToken, WithNow(c.now))
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Verify(r, body); err != nil {
			return
		}
		// Accepted: it must be exactly what the signer produced.
		a, err := parseAuthorization(auth)
		if err != nil {
			t.Fatalf("accepted an unparsable header %q", auth)
		}
		want := mac(testToken, r.Method, r.URL.RequestURI(), a.tsText, a.nonceText, body)
		if !bytes.Equal(want, a.sig) {
			t.Fatalf("accepted a wrong signature for %q %q", method, target)
		}
	})
}

func newReqF(f *testing.F, method, url string) *http.Request {
	r, err := http.NewRequest(method, url, nil)
	if err != nil {
		f.Fatal(err)
	}
	return r
}
