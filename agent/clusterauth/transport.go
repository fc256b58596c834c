package clusterauth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Transport is an http.RoundTripper that signs every request with Token
// before handing it to Base (http.DefaultTransport when nil). It buffers the
// request body (at most MaxBodySize bytes) to hash it. Its fields must not
// change while requests are in flight.
//
// Each request is signed once: if the underlying transport retries it after
// the agent received it, the agent refuses the retry as replayed.
type Transport struct {
	Token string
	Base  http.RoundTripper
}

// RoundTrip implements http.RoundTripper. It does not modify req.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(req.Body, MaxBodySize+1))
		req.Body.Close() // a RoundTripper must close the body, even on error
		if err != nil {
			return nil, fmt.Errorf("sign request: read body: %w", err)
		}
		if len(b) > MaxBodySize {
			return nil, errors.New("sign request: " + errTooLarge.Error())
		}
		body = b
	}
	r := req.Clone(req.Context())
	if body != nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		r.ContentLength = int64(len(body))
	}
	Sign(r, t.Token, body)
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	return base.RoundTrip(r)
}
