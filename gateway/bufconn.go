package gateway

import (
	"io"
	"net"
	"sync"
	"time"
)

// readAheadConn cuts read system calls while a connection streams, without
// holding a buffer while it idles.
//
// x/crypto reads each SSH packet through a 4 KiB bufio.Reader: the length
// prefix fills those 4 KiB, and the rest of a 32 KiB data packet is read
// straight from the socket, so a bulk transfer costs two or three reads per
// packet on each of the gateway's two connections. A plain bigger buffer
// would stay allocated for every idle shell (the gateway's reads are always
// pending), so the big buffer is borrowed from a pool only once a read
// comes back full (more is probably queued). It is handed back before any
// read that would probably block: once it is drained and its last fill
// took less than it holds, the socket had nothing more, and the next read
// goes straight into the caller's buffer again.
type readAheadConn struct {
	net.Conn
	buf  *[]byte // borrowed while streaming; nil when idle
	r, w int     // unread bytes are (*buf)[r:w]
	full bool    // the last fill filled buf
}

// readAheadSize is what a streaming connection reads per system call: as
// much as has queued, up to 512 KiB (see bulkCopyBuf for the measurements).
const readAheadSize = 512 << 10

var readAheadBufs = sync.Pool{New: func() any { b := make([]byte, readAheadSize); return &b }}

// newReadAheadConn wraps nc. Like bufio.Reader, it is not safe for
// concurrent Reads (x/crypto reads from one goroutine); Write and Close go
// straight through.
func newReadAheadConn(nc net.Conn) *readAheadConn { return &readAheadConn{Conn: nc} }

func (c *readAheadConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.buf != nil && c.r == c.w && !c.full {
		c.release()
	}
	if c.buf == nil {
		n, err := c.Conn.Read(p)
		if n == len(p) && err == nil {
			c.buf = readAheadBufs.Get().(*[]byte)
			c.full = true // fill at the next read
		}
		return n, err
	}
	if c.r == c.w {
		n, err := c.Conn.Read(*c.buf)
		if n == 0 {
			c.release()
			return 0, err
		}
		c.r, c.w, c.full = 0, n, n == len(*c.buf)
	}
	n := copy(p, (*c.buf)[c.r:c.w])
	c.r += n
	return n, nil
}

func (c *readAheadConn) release() {
	if c.buf != nil {
		readAheadBufs.Put(c.buf)
		c.buf, c.r, c.w, c.full = nil, 0, 0, false
	}
}

// coalesceConn joins the two writes x/crypto makes for each large packet.
//
// x/crypto writes a packet through a 4 KiB bufio.Writer: a packet larger
// than that reaches the socket as one full 4 KiB write followed at once, in
// the same call, by a write of the rest. coalesceConn holds a write of
// exactly bufio's size and sends it together with the next write in one
// writev(2). A packet that is exactly 4 KiB long (impossible with AES-GCM,
// whose packets are 16k+20 bytes, but possible with other ciphers) has no
// next write to wait for: a timer sends it after holdMax.
//
// The writev needs the socket itself: net.Buffers.WriteTo falls back to one
// write per buffer for any other io.Writer, and the gateway's conns are
// wrapped (peekConn, relay.Conn). Wrappers whose writes go unchanged to the
// conn they wrap say so with a WriteConn method; see socketForWrites.
type coalesceConn struct {
	net.Conn
	socket io.Writer // where the joined writes go: the innermost WriteConn
	mu     sync.Mutex
	held   *[]byte // a copy of the held write, or nil
	timer  *time.Timer
	err    error // from a timer flush, returned by the next Write
}

const (
	// x/crypto's transport uses bufio.NewWriter's default size.
	xcryptoWriteBuf = 4096
	holdMax         = 2 * time.Millisecond
)

var heldBufs = sync.Pool{New: func() any { b := make([]byte, xcryptoWriteBuf); return &b }}

func newCoalesceConn(nc net.Conn) *coalesceConn {
	return &coalesceConn{Conn: nc, socket: socketForWrites(nc)}
}

// writeThrough is implemented by conn wrappers that change only reads (or
// nothing of the byte stream): writing to WriteConn() is the same as
// writing to the wrapper. A TLS conn's NetConn is not such a thing, hence
// a method of our own.
type writeThrough interface {
	WriteConn() net.Conn
}

// socketForWrites unwraps nc through the wrappers that write through, so
// that a vectored write reaches the *net.TCPConn (or whatever is below the
// last such wrapper).
func socketForWrites(nc net.Conn) net.Conn {
	for range 8 { // wrappers are few; a cycle must not loop forever
		wt, ok := nc.(writeThrough)
		if !ok {
			break
		}
		nc = wt.WriteConn()
	}
	return nc
}

func (c *coalesceConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.held != nil {
		c.timer.Stop()
		bufs := net.Buffers{*c.held, p}
		_, err := bufs.WriteTo(c.socket)
		c.releaseHeld()
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if len(p) != xcryptoWriteBuf {
		return c.Conn.Write(p)
	}
	c.held = heldBufs.Get().(*[]byte)
	copy(*c.held, p)
	if c.timer == nil {
		c.timer = time.AfterFunc(holdMax, c.flushHeld)
	} else {
		c.timer.Reset(holdMax)
	}
	return len(p), nil
}

// flushHeld sends a held write that no other write followed.
func (c *coalesceConn) flushHeld() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil {
		return
	}
	if _, err := c.Conn.Write(*c.held); err != nil {
		c.err = err
	}
	c.releaseHeld()
}

func (c *coalesceConn) releaseHeld() {
	heldBufs.Put(c.held)
	c.held = nil
}

// Close sends what is held first (x/crypto may close right after writing a
// disconnect message), unless a Write is in progress: Close must unblock a
// writer stuck on a peer that stopped reading, not wait for it.
func (c *coalesceConn) Close() error {
	if c.mu.TryLock() {
		if c.held != nil {
			c.timer.Stop()
			_, _ = c.Conn.Write(*c.held)
			c.releaseHeld()
		}
		c.mu.Unlock()
	}
	return c.Conn.Close()
}
