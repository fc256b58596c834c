package gateway

import (
	"io"
	"sync"
)

// Copy buffers. A relay copy spends nearly all its life blocked in Read,
// and three of them run per session (stdin, stdout and stderr), so the
// buffer held across that Read is most of a session's memory: 32 KiB each
// would be 96 KiB per idle shell. A copy therefore waits with a small
// buffer, big enough for keystrokes, a prompt or a line of output, and
// borrows a packet-sized one once a read fills it, until reads come back
// no bigger than a burst of terminal output again.
//
// While reads fill even the packet-sized buffer, data is queued and the
// copy reads with a bigger one: once 96 KiB of a channel's window are
// outstanding, x/crypto answers every Read with a window adjust (a packet
// and a write to the peer), so reading what has queued in one go instead
// of packet by packet cut the gateway's CPU per GiB relayed by about a
// tenth in the bench (gateway/bench). 512 KiB did no better than 128 while
// the host ran two Ps; with one (a machine of two CPUs, see
// host.TuneRuntime) the copy runs only once x/crypto's reader has parked,
// so more has queued, and 512 KiB here and in readAheadConn took the
// gateway 1.88-2.86 core-s/GiB against 2.16-3.17 (six interleaved pairs of
// bench runs, lower in five). The big buffer goes back to its pool after
// any read it did not fill: the next read may block for as long as the
// session idles, so only streaming copies hold one.
const (
	idleCopyBuf   = 256
	burstSize     = 1 << 10
	packetCopyBuf = 32 << 10 // x/crypto's largest channel data packet
	bulkCopyBuf   = 512 << 10
)

var (
	packetBufs = sync.Pool{New: func() any { b := make([]byte, packetCopyBuf); return &b }}
	bulkBufs   = sync.Pool{New: func() any { b := make([]byte, bulkCopyBuf); return &b }}
)

// copyData copies src to dst until src ends or a write fails, and then
// calls ended. It returns when the calling goroutine is done with the
// copy, which may be before: after each write that leaves the copy idle,
// the copy goes on on a new goroutine and this one ends (see below).
//
// A copy is parked in Read for most of a session's life, and the stack it
// parks on is whatever its goroutine needed most: writing a packet (x/crypto's
// channel, its cipher, the socket) grows it to 4 KiB, and a parked stack only
// halves at a GC while under a quarter of it is in use, counting the 800
// bytes of guard the runtime keeps, which a goroutine in x/crypto's Read
// never is. Reading on a fresh goroutine after each idle write keeps the
// parked copy at the 2 KiB a goroutine starts with: 2 KiB less per copy,
// two or three copies per session, thousands of sessions; the cost is a
// goroutine started per burst of interactive traffic (a keystroke, a
// prompt), about a microsecond, against the tens a packet costs. A bulk
// stream stays on its goroutine until its reads come back small.
func copyData(dst io.Writer, src io.Reader, ended func()) {
	copyFrom(dst, src, ended, new([idleCopyBuf]byte))
}

func copyFrom(dst io.Writer, src io.Reader, ended func(), idle *[idleCopyBuf]byte) {
	for {
		n, err := src.Read(idle[:])
		if n > 0 {
			if _, werr := dst.Write(idle[:n]); werr != nil {
				ended()
				return
			}
		}
		if err != nil {
			ended()
			return
		}
		// A full small read means more is waiting: stream with a big
		// buffer until the reads come back small again.
		if n == len(idle) && !copyBulk(dst, src) {
			ended()
			return
		}
		if n > 0 {
			go copyFrom(dst, src, ended, idle)
			return
		}
	}
}

// copyBulk copies with pooled buffers while reads return more than
// burstSize: packet-sized ones, and bulk ones while reads fill them. It
// reports whether copying may go on.
func copyBulk(dst io.Writer, src io.Reader) bool {
	pool := &packetBufs
	for {
		bp := pool.Get().(*[]byte)
		n, err := src.Read(*bp)
		var werr error
		if n > 0 {
			_, werr = dst.Write((*bp)[:n])
		}
		full := n == len(*bp)
		pool.Put(bp)
		switch {
		case werr != nil || err != nil:
			return false
		case n <= burstSize:
			return true
		case full:
			pool = &bulkBufs
		default:
			pool = &packetBufs
		}
	}
}
