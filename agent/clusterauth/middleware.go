package clusterauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
)

// MaxBodySize is the largest request body Middleware and Transport accept:
// bodies are read into memory to be hashed.
const MaxBodySize = 1 << 20

// Middleware returns a handler that reads the request body (at most
// MaxBodySize bytes, else 413), verifies the request with v, and calls next
// with r.Body restored to the same bytes. It answers a request that fails
// verification with 401 (503 for ErrNonceCacheFull) and a JSON body
// {"error":"..."}, without calling next. Refusals are not logged; see
// MiddlewareWithLogger.
func Middleware(v *Verifier, next http.Handler) http.Handler {
	return MiddlewareWithLogger(v, nil, next)
}

// MiddlewareWithLogger is Middleware that logs each refusal at Warn on
// logger (nil: no logging) with the remote address, method, path and
// reason. It never logs the Authorization header.
func MiddlewareWithLogger(v *Verifier, logger *slog.Logger, next http.Handler) http.Handler {
	if v == nil || next == nil {
		panic("clusterauth: Middleware needs a Verifier and a handler") // programming error at wiring time
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse := func(status int, err error) {
			logger.Warn("request refused", "remote_addr", r.RemoteAddr, "method", r.Method,
				"path", r.URL.Path, "status", status, "err", err)
			WriteError(w, status, err.Error())
		}
		if r.ContentLength > MaxBodySize {
			refuse(http.StatusRequestEntityTooLarge, errTooLarge)
			return
		}
		if r.Body == nil { // only in handler tests; servers always set one
			r.Body = http.NoBody
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
		if err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				refuse(http.StatusRequestEntityTooLarge, errTooLarge)
			} else {
				refuse(http.StatusBadRequest, errors.New("cannot read request body"))
			}
			return
		}
		if err := v.Verify(r, body); err != nil {
			status := http.StatusUnauthorized
			if errors.Is(err, ErrNonceCacheFull) {
				status = http.StatusServiceUnavailable
			}
			refuse(status, err)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		r.ContentLength = int64(len(body))
		next.ServeHTTP(w, r)
	})
}

var errTooLarge = errors.New("request body larger than " + strconv.Itoa(MaxBodySize) + " bytes")

// WriteError answers with status and the JSON body {"error": msg}, the error
// shape of every host<->agent endpoint. msg is shown to the peer: keep
// internal detail out of it.
func WriteError(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{msg})
}
