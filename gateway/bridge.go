package gateway

import (
	"io"
	"sync/atomic"

	gossh "golang.org/x/crypto/ssh"
)

// pairTaps are the taps a channel pair starts with: a session the client
// opened has its data held until it starts and its EOF after its exit
// status, and only its VPS side's extended data (stderr) is copied beside
// the data, and then only for a session without a pty.
func pairTaps(clientSession bool) (toVPS, toClient tap) {
	toVPS = tap{holdDataUntilStart: clientSession, extended: extendedAfter}
	toClient = tap{eofAfterExit: clientSession, extended: extendedAfter}
	if clientSession {
		toClient.extended = extendedUnlessPTY
	}
	return toVPS, toClient
}

// extendedCopy says when a direction copies its extended data. A copy
// beside the data is a goroutine parked on it for the channel's life, and
// most directions never carry any: sshd ignores what a client sends
// (channels.c, "bad ext data"), nobody sends any on forwarded, X11 or agent
// channels, and under a pty sshd sends none either (the pty merges stderr
// into the data: session.c gives it no stderr descriptor; Dropbear's
// ptycommand likewise). An idle gateway holds thousands of channels, and
// every parked goroutine is 2 to 4 KiB of stack. What comes where none was
// expected is still relayed in full, only after the data ended; a peer that
// fills its window with it and waits for more window before its EOF stalls
// only its own channel.
type extendedCopy int

const (
	// extendedAfter copies it after the data ended, on the data's
	// goroutine.
	extendedAfter extendedCopy = iota
	// extendedUnlessPTY copies it after the data unless the session starts
	// without a pty; then beside it, on a goroutine of its own, from then
	// on (stderr of a command or a non-interactive shell: a prompt or a
	// progress bar must show at once). For the VPS side of a client's
	// session.
	extendedUnlessPTY
)

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
	// extended says when extended data is copied.
	extended extendedCopy
}

// bridge relays one channel pair (down = client side, up = VPS side) until
// both are closed. Each direction is a half: its data and extended data are
// copied (concurrently where extended data is expected: they share one
// window; see extendedCopy), its requests are forwarded in order, and
// the far side is closed only after the near side's CLOSE has arrived (its
// request channel closed) and both copies reached EOF. That order keeps
// output that sshd sends after exit-status, and makes
// `cmd | ssh host sha256sum` exact.
//
// One goroutine keeps the books of both halves: an idle gateway holds
// thousands of pairs, so every parked goroutine counts. It never waits on a
// peer: what a half sends toward its destination (requests, EOF, CLOSE)
// runs in order on that half's serialQueue, so a request waiting for its
// reply holds up neither the other direction nor the loop. While
// maxQueuedRequests of a half's requests wait, the loop stops taking more
// from it, and x/crypto's own queue pushes back on the peer, as a blocked
// reader would.
func bridge(down gossh.Channel, downReqs <-chan *gossh.Request, up gossh.Channel, upReqs <-chan *gossh.Request, toVPS, toClient *tap) {
	newBridge(down, downReqs, up, upReqs, toVPS, toClient).run()
}

// bridgeLoop is a channel pair's two halves, set up by newBridge and
// driven by run.
//
// Whatever the loop waits for but the peers' requests (a half's copies
// ending, a queued function finishing, which may let more requests in, and
// CLOSE having been sent) is signalled on wake, a token channel shared by
// both halves, and read off the halves' atomic state: a goroutine parked in
// a select holds a runtime record of 112 bytes per case, and each channel
// is another 112, per pair, thousands of pairs.
type bridgeLoop struct {
	a, b *half
	wake chan struct{}
}

// newBridge starts the copies of both halves of a pair; run relays the
// rest. The two are apart so that run can be given a goroutine whose stack
// holds nothing else: see openPair.
func newBridge(down gossh.Channel, downReqs <-chan *gossh.Request, up gossh.Channel, upReqs <-chan *gossh.Request, toVPS, toClient *tap) *bridgeLoop {
	wake := make(chan struct{}, 1)
	a, b := newHalf(down, downReqs, up, *toVPS, wake), newHalf(up, upReqs, down, *toClient, wake)
	a.onSessionStart = b.sessionStarted
	a.peer, b.peer = b, a
	return &bridgeLoop{a, b, wake}
}

// run relays requests, EOF and CLOSE until both halves are closed.
func (l *bridgeLoop) run() {
	a, b := l.a, l.b
	for {
		a.poll()
		b.poll()
		if a.closing && b.closing {
			break
		}
		select {
		case req, ok := <-takeIfRoom(a.out, a.reqs):
			a.request(req, ok)
		case req, ok := <-takeIfRoom(b.out, b.reqs):
			b.request(req, ok)
		case <-l.wake:
		}
	}
	for !a.closed.Load() || !b.closed.Load() {
		<-l.wake
	}
}

// half is one direction of a channel pair: src's data, requests, EOF and
// CLOSE, relayed to dst. Its fields are the bridge loop's, except where
// noted.
type half struct {
	dst gossh.Channel
	t   tap
	// reqs is src's requests, nil once closed.
	reqs <-chan *gossh.Request
	// dataOpen: the copies' end has not been handled yet.
	dataOpen bool
	// out runs what is sent to dst, in order, and signals the pair's wake
	// channel (see bridgeLoop) after each function.
	out *serialQueue
	// The copies' side, safe from any goroutine: the sources of data and
	// extended data, started (closed once the copies may begin, see
	// tap.holdDataUntilStart), extendedClaimed (set by whoever copies the
	// extended data: the data's copy once the data ended, or
	// copyExtendedBeside), and copiesLeft (the copies not yet ended).
	stdout, stderr  io.Reader
	started         chan struct{}
	startedOnce     atomic.Bool
	extendedClaimed atomic.Bool
	copiesLeft      atomic.Int32
	// onSessionStart is told, on out's goroutine, when a shell, exec or
	// subsystem request went through, and whether a pty-req had been
	// granted before it (pty, out's goroutine's too).
	onSessionStart func(pty bool)
	pty            bool
	exited         bool // an exit-status or exit-signal was queued
	eofDue         bool // the copies ended, EOF not queued yet
	closing        bool // dst's CLOSE was queued
	// closed is set by out's goroutine once dst has been closed.
	closed atomic.Bool
	// repliesOwed counts src's requests that want a reply and have not
	// had it yet (taken on the loop, answered on out's goroutine). The
	// other half sends CLOSE toward src only once it is zero: see settle.
	repliesOwed atomic.Int32
	// peer is the other direction of the pair.
	peer *half
}

// newHalf starts the copies of src's data to dst (once started, see
// tap.holdDataUntilStart) and returns the half for bridge to drive.
func newHalf(src gossh.Channel, srcReqs <-chan *gossh.Request, dst gossh.Channel, t tap, wake chan struct{}) *half {
	h := &half{dst: dst, t: t, reqs: srcReqs, dataOpen: true, out: newSerialQueue(wake),
		stdout: src, stderr: src.Stderr(), started: make(chan struct{})}
	if t.data != nil {
		h.stdout, h.stderr = io.TeeReader(h.stdout, t.data), io.TeeReader(h.stderr, t.data)
	}
	if !t.holdDataUntilStart {
		h.markStarted()
	}
	h.copiesLeft.Store(2)
	go h.copy()
	return h
}

// copy waits for the start, then copies the data and, unless
// copyExtendedBeside took it, the extended data after it.
func (h *half) copy() {
	<-h.started
	copyData(h.dst, h.stdout, func() {
		if h.extendedClaimed.CompareAndSwap(false, true) {
			copyData(h.dst.Stderr(), h.stderr, h.copyEnded)
		}
		h.copyEnded()
	})
}

// copyExtendedBeside starts the copy of the extended data on a goroutine
// of its own, unless it was claimed already.
func (h *half) copyExtendedBeside() {
	if h.extendedClaimed.CompareAndSwap(false, true) {
		go copyData(h.dst.Stderr(), h.stderr, h.copyEnded)
	}
}

func (h *half) copyEnded() {
	if h.copiesLeft.Add(-1) == 0 {
		signal(h.out.wake)
	}
}

// markStarted lets the copies begin.
func (h *half) markStarted() {
	if h.startedOnce.CompareAndSwap(false, true) {
		close(h.started)
	}
}

// poll takes note of what the copies and the queues signalled.
func (h *half) poll() {
	if h.dataOpen && h.copiesLeft.Load() == 0 {
		h.dataEnded()
		return
	}
	h.settle()
}

// sessionStarted is onSessionStart of the other direction: a session that
// started without a pty has its extended data copied beside the data from
// now on (extendedUnlessPTY).
func (h *half) sessionStarted(pty bool) {
	if h.t.extended == extendedUnlessPTY && !pty {
		h.copyExtendedBeside()
	}
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
	h.dataOpen, h.eofDue = false, true
	// x/crypto queues a request on reqs before it processes a later EOF,
	// so what waits there now came before the EOF.
	h.reqs = takeQueued(h.reqs, h.queueRequest)
	h.settle()
}

func (h *half) queueRequest(req *gossh.Request) {
	h.exited = h.exited || req.Type == "exit-status" || req.Type == "exit-signal"
	if req.WantReply {
		h.repliesOwed.Add(1)
	}
	h.out.push(func() { h.forward(req) })
}

// settle queues EOF and CLOSE once they are due. EOF goes after the
// requests that came before it, and for a session after its exit status: a
// client may answer EOF with CLOSE at once (PuTTY and dbclient do),
// x/crypto confirms that CLOSE by itself, and an exit-status still on its
// way from the VPS would then be lost. sshd may send EOF before
// exit-status, but never CLOSE before it. CLOSE goes last, once src has
// closed and its data has all been copied, and once dst has been answered
// every request it sent that wants a reply (the peer's repliesOwed): the
// reply to a client's exec and the VPS's CLOSE after the command ran go
// out on different goroutines, and a client that sees CLOSE first fails
// the request (x/crypto returns EOF) although the command ran. The peer's
// answers do not wait long: src has closed, so a request still waiting on
// it gets its end at once.
func (h *half) settle() {
	if h.eofDue && (!h.t.eofAfterExit || h.exited || h.reqs == nil) {
		h.eofDue = false
		h.out.push(h.sendEOF)
	}
	if h.reqs == nil && !h.dataOpen && !h.closing && h.peer.repliesOwed.Load() == 0 {
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
		h.repliesOwed.Add(-1) // the queue wakes the loop when this returns
	}
	switch req.Type {
	case "pty-req":
		// Without a reply wanted ok is false: a pty not known to be
		// granted is taken as none, and stderr copied beside.
		h.pty = h.pty || ok
	case "shell", "exec", "subsystem":
		// Forwarded, and answered if a reply was wanted: the VPS has it
		// before any data sent after it.
		h.markStarted()
		if h.onSessionStart != nil {
			h.onSessionStart(h.pty)
			h.onSessionStart = nil
		}
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
	h.closed.Store(true)
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
