package clusterauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Scheme is the Authorization scheme this package produces and accepts.
const Scheme = "KR-HMAC-SHA256"

const (
	nonceBytes = 16 // 128-bit nonces: collisions between honest senders are negligible
	tokenBytes = 32
)

// NewToken returns a new random cluster token: "krt_" and 32 bytes from
// crypto/rand, base64url-encoded without padding (47 characters). The
// prefix keeps a token from starting with "-" (one in 64 would), which
// command lines would take for a flag.
func NewToken() string {
	b := make([]byte, tokenBytes)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error (it crashes the program instead)
	return "krt_" + base64.RawURLEncoding.EncodeToString(b)
}

// Sign sets r's Authorization header to a signature of r made with token,
// stamped with the current time and a fresh random nonce. body must be the
// exact bytes r will carry (nil or empty for none); Sign does not read or
// change r.Body. Sign r after its method and URL are final: they are signed.
// A signed request is good for one delivery within the verifier's window.
func Sign(r *http.Request, token string, body []byte) {
	SignAt(r, token, body, time.Now())
}

// SignAt is Sign with the timestamp taken from now instead of the clock:
// for tests with an injected clock (see WithNow).
func SignAt(r *http.Request, token string, body []byte, now time.Time) {
	var n [nonceBytes]byte
	_, _ = rand.Read(n[:]) // never fails, see NewToken
	ts := strconv.FormatInt(now.Unix(), 10)
	nonce := hex.EncodeToString(n[:])
	sig := hex.EncodeToString(mac(token, method(r), requestURI(r.URL), ts, nonce, body))
	if r.Header == nil {
		r.Header = make(http.Header)
	}
	r.Header.Set("Authorization", Scheme+" ts="+ts+",nonce="+nonce+",sig="+sig)
}

// mac computes the signature over the canonical form documented in doc.go.
func mac(token, method, uri, ts, nonce string, body []byte) []byte {
	sum := sha256.Sum256(body)
	var b strings.Builder
	b.Grow(len(method) + len(uri) + len(ts) + len(nonce) + 2*len(sum) + 4)
	b.WriteString(method)
	b.WriteByte('\n')
	b.WriteString(uri)
	b.WriteByte('\n')
	b.WriteString(ts)
	b.WriteByte('\n')
	b.WriteString(nonce)
	b.WriteByte('\n')
	b.WriteString(hex.EncodeToString(sum[:]))
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(b.String()))
	return m.Sum(nil)
}

// method returns the method that goes on the wire: net/http sends GET for an
// empty client Method.
func method(r *http.Request) string {
	if r.Method == "" {
		return http.MethodGet
	}
	return r.Method
}

// requestURI is the origin-form request target, as the client writes it and
// as the server's parsed r.URL gives it back (path and raw query only, even
// when a client sends the absolute form to a proxy).
func requestURI(u *url.URL) string {
	if u == nil {
		return "/"
	}
	return u.RequestURI()
}
