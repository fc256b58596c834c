package relay

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// bufSize is the copy buffer when the kernel cannot splice: bulk scp and
// rsync traffic goes through here, and 32 KiB (io.Copy's default) costs
// measurably more syscalls.
const bufSize = 128 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// closeWriter is implemented by *net.TCPConn, *net.UnixConn and *Conn.
type closeWriter interface{ CloseWrite() error }

// pipe copies client->target and target->client until both directions end,
// then closes both conns. It returns the bytes copied each way and the
// first error other than a clean EOF.
//
// Teardown order: a direction whose source reaches EOF passes it on as a
// half-close (CloseWrite) and leaves the other direction running, because an
// SSH peer that got EOF may still send its last packets (exit-status,
// trailing output) after it. A direction that fails closes both conns, which
// unblocks the other one. pipe waits for both directions, so no goroutine
// outlives it; Handler.Close ends it by closing the conns.
func pipe(client, target net.Conn) (up, down int64, err error) {
	var (
		once   sync.Once
		closed atomic.Bool // set before closeBoth closes anything
	)
	closeBoth := func() {
		once.Do(func() {
			closed.Store(true)
			client.Close()
			target.Close()
		})
	}
	defer closeBoth()
	// A read or write failing because closeBoth closed its conn is the
	// consequence of the first failure (or of a full close after EOF), not
	// a new one.
	ours := func(err error) error {
		if closed.Load() && errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	}

	type result struct {
		n   int64
		err error
	}
	upc := make(chan result, 1)
	go func() {
		n, err := forward(target, client, closeBoth)
		upc <- result{n, ours(err)}
	}()
	down, derr := forward(client, target, closeBoth)
	derr = ours(derr)
	u := <-upc
	if u.err != nil {
		return u.n, down, u.err
	}
	return u.n, down, derr
}

// forward copies src to dst; see pipe for what happens at the end.
func forward(dst, src net.Conn, closeBoth func()) (int64, error) {
	n, err := copyConn(dst, src)
	if err != nil {
		closeBoth()
		return n, err
	}
	if cw, ok := dst.(closeWriter); ok {
		if cw.CloseWrite() == nil {
			return n, nil
		}
	}
	// dst cannot carry a half-close (or already failed): ending the whole
	// relay is the only way to let the peer see EOF.
	closeBoth()
	return n, nil
}

// copyConn copies until EOF (nil error) or failure. Between two TCP sockets
// io.Copy resolves to (*net.TCPConn).ReadFrom, which uses splice(2) on
// Linux: the bytes never enter user space. Otherwise it copies through a
// pooled buffer; the wrappers hide ReadFrom/WriteTo so that buffer, not
// io.Copy's 32 KiB default, is used.
func copyConn(dst, src net.Conn) (int64, error) {
	if _, ok := dst.(*net.TCPConn); ok {
		if _, ok := src.(*net.TCPConn); ok {
			return io.Copy(dst, src)
		}
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	return io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
}

type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// writeError answers status with the relay's JSON error body.
func writeError(w http.ResponseWriter, status int, relayID, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Error: msg, RelayID: relayID})
}
