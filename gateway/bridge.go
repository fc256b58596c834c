package gateway

import (
	"io"
	"sync"

	gossh "golang.org/x/crypto/ssh"
)

// pairTaps are the taps a channel pair starts with: a session the client
// opened has its data held until it starts and its EOF after its exit
// status, and only its VPS side's extended data (stderr) is copied beside
// the data.
func pairTaps(clientSession bool) (toVPS, toClient tap) {
	toVPS = tap{holdDataUntilStart: clientSession, extendedLast: true}
	toClient = tap{eofAfterExit: clientSession, extendedLast: !clientSession}
	return toVPS, toClient
}

// tap sees what one direction of a channel pair carries.
type tap struct {
	// onRequest observes each request before it is forwarded.
	onRequest func(*gossh.Request)
	// data receives a copy of the data and extended data; its Write must
	// not block for long and its errors are ignored.
	data io.Writer
	// beforeEOF runs when the source's data ended, before EOF is passed
	// on; beforeClose runs after the source closed, before the destination
	// is closed.
	beforeEOF, beforeClose func(dst gossh.Channel)
	// eofAfterExit holds this direction's EOF until exit-status or
	// exit-signal went through (or the source closed): for the VPS side of
	// a session. See half.settle.
	eofAfterExit bool
	// holdDataUntilStart holds this direction's data until a shell, exec
	// or subsystem request went through (or the source closed): for the
	// client side of a session. x/crypto hands requests and data over on
	// separate paths, so without it the copy can overtake the request the
	// client sent first. OpenSSH's sshd buffers such early data; Dropbear
	// drops it, and an sftp client whose first packet was lost waits
	// forever.
	holdDataUntilStart bool
	// extendedLast copies this direction's extended data after its data
	// ended, on the same goroutine, instead of beside it on a goroutine of
	// its own. Only the VPS side of a session sends extended data (stderr)
	// in practice: sshd ignores what a client sends (channels.c, "bad ext
	// data"), and nobody sends any on forwarded, X11 or agent channels, so a
	// goroutine parked on it in every other direction would be waste (one
	// per session, two per forwarded connection). What does come is still
	// relayed in full, only late; a peer that fills its window with it and
	// waits for more window before its EOF stalls only its own channel.
	extendedLast bool
}

// bridge relays one channel pair (down = client side, up = VPS side) until
// both are closed. Each direction is a half: its data and extended data are
// copied (concurrently where extended data is expected: they share one
// window; see tap.extendedLast), its requests are forwarded in order, and
// the far side is closed only after the near side's CLOSE has arrived (its
// request channel closed) and both copies reached EOF. That order keeps
// output that sshd sends after exit-status, and makes
// `cmd | ssh host sha256sum` exact.
//
// The caller's goroutine keeps the books of both halves: an idle session
// holds thousands of pairs, so every parked goroutine counts. It never
// waits on a peer: what a half sends toward its destination (requests,
// EOF, CLOSE) runs in order on that half's serialQueue, so a request
// waiting for its reply holds up neither the other direction nor the loop.
// While maxQueuedRequests of a half's requests wait, the loop stops taking
// more from it, and x/crypto's own queue pushes back on the peer, as a
// blocked reader would.
func bridge(down gossh.Channel, downReqs <-chan *gossh.Request, up gossh.Channel, upReqs <-chan *gossh.Request, toVPS, toClient tap) {
	a, b := newHalf(down, downReqs, up, toVPS), newHalf(up, upReqs, down, toClient)
	for !a.closing || !b.closing {
		select {
		case req, ok := <-takeIfRoom(a.out, a.reqs):
			a.request(req, ok)
		case <-a.data:
			a.dataEnded()
		case <-a.out.done:
		case req, ok := <-takeIfRoom(b.out, b.reqs):
			b.request(req, ok)
		case <-b.data:
			b.dataEnded()
		case <-b.out.done:
		}
	}
	<-a.closed
	<-b.closed
}

// half is one direction of a channel pair: src's data, requests, EOF and
// CLOSE, relayed to dst. Its fields are the bridge loop's, except where
// noted.
type half struct {
	dst gossh.Channel
	t   tap
	// reqs is src's requests, nil once closed.
	reqs <-chan *gossh.Request
	// data is closed when the copies of src's data and extended data have
	// ended; nil once seen.
	data <-chan struct{}
	// out runs what is sent to dst, in order.
	out *serialQueue
	// markStarted lets the copies begin (tap.holdDataUntilStart); safe
	// from any goroutine.
	markStarted func()
	exited      bool // an exit-status or exit-signal was queued
	eofDue      bool // the copies ended, EOF not queued yet
	closing     bool // dst's CLOSE was queued
	// closed is closed once dst has been closed (by out's goroutine).
	closed chan struct{}
}

// newHalf starts the copies of src's data to dst (once started, see
// tap.holdDataUntilStart) and returns the half for bridge to drive.
func newHalf(src gossh.Channel, srcReqs <-chan *gossh.Request, dst gossh.Channel, t tap) *half {
	h := &half{dst: dst, t: t, reqs: srcReqs, out: newSerialQueue(), closed: make(chan struct{})}
	var stdout, stderr io.Reader = src, src.Stderr()
	if t.data != nil {
		stdout, stderr = io.TeeReader(stdout, t.data), io.TeeReader(stderr, t.data)
	}
	started := make(chan struct{})
	h.markStarted = sync.OnceFunc(func() { close(started) })
	if !t.holdDataUntilStart {
		h.markStarted()
	}
	dataDone := make(chan struct{})
	h.data = dataDone
	go func() {
		defer close(dataDone)
		<-started
		if t.extendedLast {
			copyData(dst, stdout)
			copyData(dst.Stderr(), stderr)
			return
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); copyData(dst.Stderr(), stderr) }()
		copyData(dst, stdout)
		wg.Wait()
	}()
	return h
}

// request takes one of src's requests, or notes that src closed (ok false).
func (h *half) request(req *gossh.Request, ok bool) {
	if !ok {
		h.reqs = nil
		h.markStarted() // the channel closed; let the copies drain
	} else {
		h.queueRequest(req)
	}
	h.settle()
}

// dataEnded notes that both copies reached EOF (or failed).
func (h *half) dataEnded() {
	h.data, h.eofDue = nil, true
	// x/crypto queues a request on reqs before it processes a later EOF,
	// so what waits there now came before the EOF.
	h.reqs = takeQueued(h.reqs, h.queueRequest)
	h.settle()
}

func (h *half) queueRequest(req *gossh.Request) {
	h.exited = h.exited || req.Type == "exit-status" || req.Type == "exit-signal"
	h.out.push(func() { h.forward(req) })
}

// settle queues EOF and CLOSE once they are due. EOF goes after the
// requests that came before it, and for a session after its exit status: a
// client may answer EOF with CLOSE at once (PuTTY and dbclient do),
// x/crypto confirms that CLOSE by itself, and an exit-status still on its
// way from the VPS would then be lost. sshd may send EOF before
// exit-status, but never CLOSE before it. CLOSE goes last, once src has
// closed and its data has all been copied.
func (h *half) settle() {
	if h.eofDue && (!h.t.eofAfterExit || h.exited || h.reqs == nil) {
		h.eofDue = false
		h.out.push(h.sendEOF)
	}
	if h.reqs == nil && h.data == nil && !h.closing {
		h.closing = true
		h.out.push(h.close)
	}
}

// forward relays req to dst and its answer back (on out's goroutine).
func (h *half) forward(req *gossh.Request) {
	if h.t.onRequest != nil {
		h.t.onRequest(req)
	}
	ok, err := h.dst.SendRequest(req.Type, req.WantReply, req.Payload)
	if err != nil {
		ok = false
	}
	if req.WantReply {
		_ = req.Reply(ok, nil)
	}
	switch req.Type {
	case "shell", "exec", "subsystem":
		// Forwarded, and answered if a reply was wanted: the VPS has it
		// before any data sent after it.
		h.markStarted()
	}
}

// sendEOF passes the end of src's data on (stdin EOF is CloseWrite).
func (h *half) sendEOF() {
	if h.t.beforeEOF != nil {
		h.t.beforeEOF(h.dst)
	}
	_ = h.dst.CloseWrite()
}

func (h *half) close() {
	if h.t.beforeClose != nil {
		h.t.beforeClose(h.dst)
	}
	_ = h.dst.Close()
	close(h.closed)
}

// takeQueued hands take the requests already waiting on reqs, without
// blocking; it returns nil once reqs is closed.
func takeQueued(reqs <-chan *gossh.Request, take func(*gossh.Request)) <-chan *gossh.Request {
	for {
		select {
		case req, ok := <-reqs:
			if !ok {
				return nil
			}
			take(req)
		default:
			return reqs
		}
	}
}
