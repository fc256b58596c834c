package gateway

import (
	"io"
	"sync"
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
type bridgeLoop struct{ a, b *half }

// newBridge starts the copies of both halves of a pair; run relays the
// rest. The two are apart so that run can be given a goroutine whose stack
// holds nothing else: see openPair.
func newBridge(down gossh.Channel, downReqs <-chan *gossh.Request, up gossh.Channel, upReqs <-chan *gossh.Request, toVPS, toClient *tap) *bridgeLoop {
	a, b := newHalf(down, downReqs, up, *toVPS), newHalf(up, upReqs, down, *toClient)
	a.onSessionStart = b.sessionStarted
	return &bridgeLoop{a, b}
}

// run relays requests, EOF and CLOSE until both halves are closed.
func (l *bridgeLoop) run() {
	a, b := l.a, l.b
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
	// extendedClaimed is set by whoever copies src's extended data: the
	// data's copy once the data ended, or copyExtendedBeside.
	extendedClaimed atomic.Bool
	// copiesLeft counts the copies (data, extended data) not yet ended;
	// the one that ends last closes data.
	copiesLeft atomic.Int32
	// onSessionStart is told, on out's goroutine, when a shell, exec or
	// subsystem request went through, and whether a pty-req had been
	// granted before it (pty, out's goroutine's too).
	onSessionStart func(pty bool)
	pty            bool
	// copyExtendedBeside starts the copy of src's extended data on a
	// goroutine of its own, unless it was claimed already; safe from any
	// goroutine.
	copyExtendedBeside func()
	exited             bool // an exit-status or exit-signal was queued
	eofDue             bool // the copies ended, EOF not queued yet
	closing            bool // dst's CLOSE was queued
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
	h.copiesLeft.Store(2)
	copyEnded := func() {
		if h.copiesLeft.Add(-1) == 0 {
			close(dataDone)
		}
	}
	h.copyExtendedBeside = func() {
		if h.extendedClaimed.CompareAndSwap(false, true) {
			go copyData(dst.Stderr(), stderr, copyEnded)
		}
	}
	go func() {
		<-started
		copyData(dst, stdout, func() {
			if h.extendedClaimed.CompareAndSwap(false, true) {
				copyData(dst.Stderr(), stderr, copyEnded)
			}
			copyEnded()
		})
	}()
	return h
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
