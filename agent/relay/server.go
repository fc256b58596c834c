package relay

import (
	"log/slog"
	"net/http"
	"time"
)

// Limits NewHTTPServer applies to every connection before a handler runs.
const (
	// HeaderTimeout bounds reading a request's line and headers: a peer
	// that connects and stalls is dropped after it.
	HeaderTimeout = 10 * time.Second
	// MaxHeaderBytes bounds a request's headers (net/http answers 431 past
	// it). A relay request needs about 300 bytes.
	MaxHeaderBytes = 16 << 10
	// BodyTimeout bounds reading a whole request (headers and body) for the
	// agent's other endpoints; clusterauth caps bodies at 1 MiB.
	BodyTimeout = 30 * time.Second
	// IdleTimeout closes keep-alive connections with no request.
	IdleTimeout = 2 * time.Minute
)

// NewHTTPServer returns an http.Server for the agent's listener that serves
// handler (a Handler, or a mux holding one at Pattern next to the control
// API) with the limits above and logs its own errors to logger. No
// WriteTimeout is set: control API calls may legitimately run long, and
// Handler clears deadlines on the connections it hijacks anyway. Change
// fields before calling Serve.
//
// Shutting the server down does not end relays: call Handler.Close after
// Shutdown or Close.
func NewHTTPServer(handler http.Handler, logger *slog.Logger) *http.Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: HeaderTimeout,
		ReadTimeout:       BodyTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}
