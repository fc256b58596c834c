package clusterauth

import (
	"container/heap"
	"crypto/hmac"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults of a Verifier; see WithWindow and WithMaxNonces.
const (
	DefaultWindow    = 60 * time.Second
	DefaultMaxNonces = 100_000
	// MinTokenLen is the shortest token NewVerifier accepts. NewToken
	// makes 47-character tokens.
	MinTokenLen = 16
	// maxHeaderLen bounds the Authorization value parsed: ours is ~150 bytes.
	maxHeaderLen = 512
)

// Verifier checks requests signed by Sign with the same token. It is safe
// for concurrent use. Its nonce cache lives as long as the Verifier: use one
// Verifier per listening process, not one per request, or replays slip
// through.
type Verifier struct {
	// Set by NewVerifier and its options; read-only afterwards.
	token     string
	window    time.Duration
	maxNonces int
	now       func() time.Time

	mu sync.Mutex // guards seen and byExpiry; no other lock is taken under it
	// seen maps each accepted nonce to the time (Unix nanoseconds) after
	// which its request would be refused as expired anyway; byExpiry holds
	// the same entries ordered for pruning.
	seen     map[[nonceBytes]byte]int64
	byExpiry nonceHeap
}

// Option configures a Verifier; see NewVerifier.
type Option func(*Verifier) error

// WithNow sets the clock the Verifier checks timestamps and expires nonces
// against (for tests). The default is time.Now.
func WithNow(now func() time.Time) Option {
	return func(v *Verifier) error {
		if now == nil {
			return errors.New("nil now func")
		}
		v.now = now
		return nil
	}
}

// WithWindow sets how far a request's timestamp may be from the verifier's
// clock, in either direction. The default is DefaultWindow.
func WithWindow(d time.Duration) Option {
	return func(v *Verifier) error {
		if d < time.Second {
			return fmt.Errorf("replay window %s is shorter than 1s", d)
		}
		v.window = d
		return nil
	}
}

// WithMaxNonces caps the nonce cache. The default is DefaultMaxNonces.
func WithMaxNonces(n int) Option {
	return func(v *Verifier) error {
		if n < 1 {
			return fmt.Errorf("nonce cache size %d is below 1", n)
		}
		v.maxNonces = n
		return nil
	}
}

// NewVerifier returns a Verifier for token, which must be at least
// MinTokenLen characters long.
func NewVerifier(token string, opts ...Option) (*Verifier, error) {
	if len(token) < MinTokenLen {
		// Never include the token itself in the error.
		return nil, fmt.Errorf("cluster token is %d characters, need at least %d", len(token), MinTokenLen)
	}
	v := &Verifier{
		token:     token,
		window:    DefaultWindow,
		maxNonces: DefaultMaxNonces,
		now:       time.Now,
		seen:      make(map[[nonceBytes]byte]int64),
	}
	for _, opt := range opts {
		if err := opt(v); err != nil {
			return nil, fmt.Errorf("new verifier: %w", err)
		}
	}
	return v, nil
}

// Window reports the accepted clock distance of request timestamps.
func (v *Verifier) Window() time.Duration { return v.window }

// Verify checks r's Authorization header against body (the exact request
// body, nil for none) and, when it is valid, records its nonce so that the
// same request is refused next time. It returns nil or an error wrapping
// one of ErrMissing, ErrMalformed, ErrExpired, ErrBadSignature, ErrReplayed
// or ErrNonceCacheFull. Verify does not read r.Body.
func (v *Verifier) Verify(r *http.Request, body []byte) error {
	a, err := parseAuthorization(r.Header.Get("Authorization"))
	if err != nil {
		return err
	}
	now := v.now()
	// Check the clock before spending an HMAC on it; ts is not secret.
	stamp := time.Unix(a.ts, 0)
	if skew := now.Sub(stamp); skew > v.window || skew < -v.window {
		return fmt.Errorf("%w: timestamp is %s off the receiver's clock (limit %s)",
			ErrExpired, skew.Round(time.Second).Abs(), v.window)
	}
	want := mac(v.token, method(r), requestURI(r.URL), a.tsText, a.nonceText, body)
	if !hmac.Equal(want, a.sig) { // constant time
		return ErrBadSignature
	}
	// Only now, with a valid signature, touch the nonce cache: nobody
	// without the token can fill it.
	return v.remember(a.nonce, stamp.Add(v.window).UnixNano(), now.UnixNano())
}

// remember records nonce until expires, or reports why it cannot. Both
// times are Unix nanoseconds.
func (v *Verifier) remember(nonce [nonceBytes]byte, expires, now int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for len(v.byExpiry) > 0 && now > v.byExpiry[0].expires {
		e := heap.Pop(&v.byExpiry).(nonceEntry)
		delete(v.seen, e.nonce)
	}
	if _, ok := v.seen[nonce]; ok {
		return ErrReplayed
	}
	if len(v.seen) >= v.maxNonces {
		return fmt.Errorf("%w (%d requests)", ErrNonceCacheFull, len(v.seen))
	}
	v.seen[nonce] = expires
	heap.Push(&v.byExpiry, nonceEntry{nonce: nonce, expires: expires})
	return nil
}

// authorization is a parsed Authorization header. The text fields are the
// strings as sent: the signature covers those, not a re-encoding.
type authorization struct {
	ts        int64
	tsText    string
	nonce     [nonceBytes]byte
	nonceText string
	sig       []byte
}

func parseAuthorization(h string) (authorization, error) {
	var a authorization
	scheme, params, _ := strings.Cut(h, " ")
	// Auth schemes are case-insensitive (RFC 9110 section 11.1).
	if h == "" || !strings.EqualFold(scheme, Scheme) {
		return a, ErrMissing
	}
	if len(h) > maxHeaderLen {
		return a, fmt.Errorf("%w: header longer than %d bytes", ErrMalformed, maxHeaderLen)
	}
	var haveTS, haveNonce, haveSig bool
	for p := range strings.SplitSeq(params, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok {
			return a, fmt.Errorf("%w: parameter without '='", ErrMalformed)
		}
		switch k {
		case "ts":
			n, err := strconv.ParseInt(val, 10, 64)
			if haveTS || err != nil || n < 0 {
				return a, fmt.Errorf("%w: bad ts", ErrMalformed)
			}
			a.ts, a.tsText, haveTS = n, val, true
		case "nonce":
			if haveNonce || hex.DecodedLen(len(val)) != nonceBytes {
				return a, fmt.Errorf("%w: nonce must be %d hex digits", ErrMalformed, 2*nonceBytes)
			}
			if _, err := hex.Decode(a.nonce[:], []byte(val)); err != nil {
				return a, fmt.Errorf("%w: nonce must be %d hex digits", ErrMalformed, 2*nonceBytes)
			}
			a.nonceText, haveNonce = val, true
		case "sig":
			sig, err := hex.DecodeString(val)
			if haveSig || err != nil || len(sig) != 32 {
				return a, fmt.Errorf("%w: sig must be 64 hex digits", ErrMalformed)
			}
			a.sig, haveSig = sig, true
		default:
			return a, fmt.Errorf("%w: unknown parameter", ErrMalformed)
		}
	}
	if !haveTS || !haveNonce || !haveSig {
		return a, fmt.Errorf("%w: need ts, nonce and sig", ErrMalformed)
	}
	return a, nil
}

type nonceEntry struct {
	nonce   [nonceBytes]byte
	expires int64 // Unix nanoseconds
}

// nonceHeap is a min-heap of nonceEntry by expiry (container/heap).
type nonceHeap []nonceEntry

func (h nonceHeap) Len() int           { return len(h) }
func (h nonceHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h nonceHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *nonceHeap) Push(x any)        { *h = append(*h, x.(nonceEntry)) }
func (h *nonceHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
