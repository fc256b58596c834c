package gateway

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// Global request types the gateway answers itself instead of relaying.
const (
	// From the VPS sshd: its host keys (OpenSSH UpdateHostKeys). Clients
	// must never learn or pin the VPS's keys under the gateway's name.
	reqHostKeys = "hostkeys-00@openssh.com"
	// From the client: asks to prove ownership of the announced keys.
	reqHostKeysProve = "hostkeys-prove-00@openssh.com"
)

// handleChannel is the only gliderlabs channel handler: it relays every
// channel type the client opens to the VPS.
func (s *Server) handleChannel(_ *gliderssh.Server, sconn *gossh.ServerConn, nc gossh.NewChannel, ctx gliderssh.Context) {
	c := connFrom(ctx)
	if c == nil || !c.authDone.Load() {
		_ = nc.Reject(gossh.Prohibited, "not authenticated")
		return
	}
	c.setDownstream(sconn)
	if nc.ChannelType() == "session" && !c.sessionGate.admit(time.Now()) {
		c.log.Warn("session opened after no-more-sessions@openssh.com: closing the connection, as sshd does")
		_ = nc.Reject(gossh.Prohibited, "no more sessions on this connection")
		_ = sconn.Close()
		return
	}
	up, err := c.waitHop()
	if err != nil {
		c.refuseChannel(nc, err)
		return
	}
	c.openPair(nc, up.client, "client")
}

// openFromVPS relays a channel the VPS opens (forwarded-tcpip,
// forwarded-streamlocal, x11, auth-agent) toward the client.
func (c *conn) openFromVPS(nc gossh.NewChannel) {
	down := c.downstream()
	if down == nil {
		_ = nc.Reject(gossh.ConnectionFailed, "client gone")
		return
	}
	c.openPair(nc, down, "vps")
}

// openPair opens the twin of nc on the other connection, then accepts nc and
// bridges the two. The twin is opened first so that a refusal (connect
// failed inside the VPS, agent forwarding not requested...) reaches the
// opener with the other side's reason and message.
func (c *conn) openPair(nc gossh.NewChannel, other gossh.Conn, from string) {
	if !c.addPipe() {
		_ = nc.Reject(gossh.ConnectionFailed, "kohakuriver: the connection to the VPS has ended")
		return
	}
	defer c.pipes.Done()
	limit := c.srv.limits().MaxChannels
	if int(c.channels.Add(1)) > limit {
		c.channels.Add(-1)
		c.log.Warn("channel refused: limit reached", "type", nc.ChannelType(), "from", from, "limit", limit)
		_ = nc.Reject(gossh.ResourceShortage, fmt.Sprintf("kohakuriver: too many channels on this connection (limit %d)", limit))
		return
	}
	defer c.channels.Add(-1)
	c.srv.metrics.channel(1)
	defer c.srv.metrics.channel(-1)
	twin, twinReqs, err := other.OpenChannel(nc.ChannelType(), nc.ExtraData())
	if err != nil {
		if oce, ok := err.(*gossh.OpenChannelError); ok {
			_ = nc.Reject(oce.Reason, oce.Message)
		} else {
			_ = nc.Reject(gossh.ConnectionFailed, "kohakuriver: the other side is gone")
		}
		c.log.Debug("channel refused", "type", nc.ChannelType(), "from", from, "err", err)
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		twin.Close()
		go gossh.DiscardRequests(twinReqs)
		return
	}
	c.log.Debug("channel open", "type", nc.ChannelType(), "from", from)
	if f := describeForward(nc.ChannelType(), nc.ExtraData()); f != "" {
		c.recordForward(f)
	}
	clientSession := nc.ChannelType() == "session" && from == "client"
	toVPS, toClient := pairTaps(clientSession)
	// Requests from the VPS side carry exit-status and exit-signal.
	toClient.onRequest = c.noteExit
	if clientSession {
		c.trackSession(ch, true)
		defer c.trackSession(ch, false)
		c.explainLostVPS(&toClient)
		if rec := c.srv.newRecording(c); rec != nil {
			defer rec.close()
			toVPS.onRequest, toVPS.data = rec.observe, rec.input()
			toClient.data = rec.output()
		}
	}
	if from == "client" {
		bridge(ch, reqs, twin, twinReqs, toVPS, toClient)
	} else {
		bridge(twin, twinReqs, ch, reqs, toVPS, toClient)
	}
}

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
	// a session. See half.
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

// explainLostVPS makes a session whose VPS connection died (container
// killed, node gone) end with a reason on stderr and exit status 255
// rather than a bare close. The reason must precede EOF (no data may follow
// it), so it keys on the hop's transport having failed, which is known
// before x/crypto ends the channels (see lossConn).
func (c *conn) explainLostVPS(t *tap) {
	var exited, explained atomic.Bool
	t.onRequest = func(req *gossh.Request) {
		if req.Type == "exit-status" || req.Type == "exit-signal" {
			exited.Store(true)
		}
		c.noteExit(req)
	}
	t.beforeEOF = func(dst gossh.Channel) {
		select {
		case <-c.hopLost:
		default:
			return
		}
		if exited.Load() {
			return
		}
		explained.Store(true)
		ref := c.route.vps.Ref()
		msg := userMessage(userErrorf(nil, "the connection to VPS %s was lost (its container stopped or its node went away); check `kohakuriver vps status %s`", ref, ref), c.id)
		_, _ = io.WriteString(dst.Stderr(), msg+"\r\n")
	}
	t.beforeClose = func(dst gossh.Channel) {
		if explained.Load() && !exited.Load() {
			_, _ = dst.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, 255))
		}
	}
}

// bridge relays one channel pair (down = client side, up = VPS side) until
// both are closed. Each direction is a half: its data and extended data are
// copied (concurrently where extended data is expected: they share one
// window; see tap.extendedLast), its requests are forwarded in order, and the far side is closed only after the near side's CLOSE has
// arrived (its request channel closed) and both copies reached EOF. That
// order keeps output that sshd sends after exit-status, and makes
// `cmd | ssh host sha256sum` exact.
func bridge(down gossh.Channel, downReqs <-chan *gossh.Request, up gossh.Channel, upReqs <-chan *gossh.Request, toVPS, toClient tap) {
	// One half runs on the caller's goroutine: an idle session holds
	// thousands of these, so every parked goroutine counts.
	done := make(chan struct{})
	go func() { defer close(done); half(down, downReqs, up, toVPS) }()
	half(up, upReqs, down, toClient)
	<-done
}

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
// tenth in the bench (gateway/bench; 512 KiB did no better than 128). The
// big buffer goes back to its pool after any read it did not fill: the
// next read may block for as long as the session idles.
const (
	idleCopyBuf   = 256
	burstSize     = 1 << 10
	packetCopyBuf = 32 << 10 // x/crypto's largest channel data packet
	bulkCopyBuf   = 128 << 10
)

var (
	packetBufs = sync.Pool{New: func() any { b := make([]byte, packetCopyBuf); return &b }}
	bulkBufs   = sync.Pool{New: func() any { b := make([]byte, bulkCopyBuf); return &b }}
)

// copyData copies src to dst until src ends or a write fails.
func copyData(dst io.Writer, src io.Reader) {
	var idle [idleCopyBuf]byte
	for {
		n, err := src.Read(idle[:])
		if n > 0 {
			if _, werr := dst.Write(idle[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
		// A full small read means more is waiting: stream with a big
		// buffer until the reads come back small again.
		if n == len(idle) && !copyBulk(dst, src) {
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

func half(src gossh.Channel, srcReqs <-chan *gossh.Request, dst gossh.Channel, t tap) {
	var stdout, stderr io.Reader = src, src.Stderr()
	if t.data != nil {
		stdout, stderr = io.TeeReader(stdout, t.data), io.TeeReader(stderr, t.data)
	}
	started := make(chan struct{})
	markStarted := sync.OnceFunc(func() { close(started) })
	if !t.holdDataUntilStart {
		markStarted()
	}
	dataDone := make(chan struct{})
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
	exited := false
	forward := func(req *gossh.Request) {
		if t.onRequest != nil {
			t.onRequest(req)
		}
		exited = exited || req.Type == "exit-status" || req.Type == "exit-signal"
		ok, err := dst.SendRequest(req.Type, req.WantReply, req.Payload)
		if err != nil {
			ok = false
		}
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
		switch req.Type {
		case "shell", "exec", "subsystem":
			// Forwarded, and answered if a reply was wanted: the VPS
			// has it before any data sent after it.
			markStarted()
		}
	}
	// Both streams hit EOF: pass the EOF on (stdin EOF is CloseWrite).
	sendEOF := func() {
		if t.beforeEOF != nil {
			t.beforeEOF(dst)
		}
		_ = dst.CloseWrite()
	}
	// EOF goes after the requests that came before it, and for a session
	// after its exit status: a client may answer EOF with CLOSE at once
	// (PuTTY and dbclient do), x/crypto confirms that CLOSE by itself, and an
	// exit-status still on its way from the VPS would then be lost. sshd
	// may send EOF before exit-status, but never CLOSE before it. x/crypto
	// queues a request on srcReqs before it processes a later EOF, so what
	// is queued when the copies end came first.
	reqs, data := srcReqs, (<-chan struct{})(dataDone)
	eofDue := false // both copies ended, EOF not sent yet
	for reqs != nil || data != nil {
		select {
		case req, ok := <-reqs:
			if !ok {
				reqs = nil
				markStarted() // the channel closed; let the copies drain
			} else {
				forward(req)
			}
		case <-data:
			data, eofDue = nil, true
			reqs = forwardQueued(reqs, forward)
		}
		if eofDue && (!t.eofAfterExit || exited || reqs == nil) {
			sendEOF()
			eofDue = false
		}
	}
	if t.beforeClose != nil {
		t.beforeClose(dst)
	}
	_ = dst.Close()
}

// forwardQueued forwards the requests already waiting on reqs without
// blocking; it returns nil once reqs is closed.
func forwardQueued(reqs <-chan *gossh.Request, forward func(*gossh.Request)) <-chan *gossh.Request {
	for {
		select {
		case req, ok := <-reqs:
			if !ok {
				return nil
			}
			forward(req)
		default:
			return reqs
		}
	}
}

// noteExit records exit-status and exit-signal for the connection log.
func (c *conn) noteExit(req *gossh.Request) {
	switch req.Type {
	case "exit-status":
		if len(req.Payload) >= 4 {
			c.recordExit(fmt.Sprintf("status %d", binary.BigEndian.Uint32(req.Payload)))
		}
	case "exit-signal":
		var sig struct {
			Signal     string
			CoreDumped bool
			Msg        string
			Lang       string
		}
		if gossh.Unmarshal(req.Payload, &sig) == nil {
			c.recordExit("signal " + sig.Signal)
		}
	}
}

// refuseChannel tells the client why the VPS cannot be reached. A session
// gets the message on stderr and exit status 255 (the status ssh itself uses
// for connection failures), so shells, scp and sftp all print it; other
// channel types are rejected with it.
func (c *conn) refuseChannel(nc gossh.NewChannel, err error) {
	msg := userMessage(err, c.id)
	if nc.ChannelType() != "session" {
		_ = nc.Reject(gossh.ConnectionFailed, msg)
		return
	}
	ch, reqs, aerr := nc.Accept()
	if aerr != nil {
		return
	}
	defer ch.Close()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case req, ok := <-reqs:
			if !ok {
				return
			}
			switch req.Type {
			case "shell", "exec", "subsystem":
				_ = req.Reply(true, nil)
				_, _ = io.WriteString(ch.Stderr(), msg+"\r\n")
				_, _ = ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, 255))
				return
			default:
				// pty-req, env...: accept so the client gets to its
				// shell/exec request and shows the message.
				_ = req.Reply(req.Type == "pty-req" || req.Type == "env", nil)
			}
		case <-t.C:
			return
		case <-c.ctx.Done():
			return
		}
	}
}

// handleGlobalRequest relays the client's global requests (tcpip-forward,
// streamlocal-forward, keepalive, ...) to the VPS in order
// and returns the VPS's reply, including its payload (the port allocated
// for -R 0:...).
func (s *Server) handleGlobalRequest(ctx gliderssh.Context, _ *gliderssh.Server, req *gossh.Request) (bool, []byte) {
	c := connFrom(ctx)
	if c == nil || !c.authDone.Load() {
		return false, nil
	}
	if sc, ok := ctx.Value(gliderssh.ContextKeyConn).(*gossh.ServerConn); ok {
		c.setDownstream(sc)
	}
	var forward, cancel bool
	switch req.Type {
	case reqHostKeysProve:
		return false, nil
	case reqNoMoreSessions:
		// Enforced here, not relayed: see lateSessionGrace.
		c.sessionGate.close(time.Now())
		return true, nil
	case "tcpip-forward", "streamlocal-forward@openssh.com":
		if limit := s.limits().MaxForwards; int(c.forwards.Add(1)) > limit {
			c.forwards.Add(-1)
			c.log.Warn("forward refused: limit reached", "limit", limit)
			return false, nil
		}
		forward = true
	case "cancel-tcpip-forward", "cancel-streamlocal-forward@openssh.com":
		cancel = true
	}
	up, err := c.waitHop()
	if err != nil {
		if forward {
			c.forwards.Add(-1)
		}
		return false, nil
	}
	// Forward requests always ask the VPS for an answer, whatever the
	// client asked, so that the count follows what the VPS granted: sshd
	// refuses a forward it cannot set up and a cancel for a forward it does
	// not have. gliderlabs replies to the client only if it asked.
	ok, payload, err := up.client.SendRequest(req.Type, req.WantReply || forward || cancel, req.Payload)
	if err != nil {
		ok, payload = false, nil
	}
	switch {
	case forward && ok:
		c.recordForward(describeForward(req.Type, req.Payload))
	case forward:
		c.forwards.Add(-1)
	case cancel && ok:
		c.forwards.Add(-1)
	}
	return ok, payload
}

// vpsRequests relays the VPS's global requests to the client, in order,
// except hostkeys-00@openssh.com, waiting for the client's reply where one
// is wanted. A goroutine forwards them while any are queued and ends when
// the queue is empty: sshd sends a host key announcement once and
// keepalives only if configured, so one parked per connection for them
// would be waste.
type vpsRequests struct {
	c *conn
	// queue holds what waits to be forwarded. When it is full, push
	// blocks, and with it the reading of the hop's requests: the
	// back-pressure x/crypto's own queue of the same size gives.
	queue chan *gossh.Request
	// hopEnded is closed once the hop's transport has failed or ended:
	// then a push that waits for room gives up, so that the end of the hop
	// is seen even while the client holds up the queue.
	hopEnded <-chan struct{}
	// mu guards running. push sends to queue under mu; drain checks under
	// mu that queue is empty before it stops, so a request is never left
	// queued with no goroutine to forward it, and there is never more than
	// one, which keeps the order.
	mu      sync.Mutex
	running bool
}

// vpsRequestBacklog is how many of the VPS's requests may wait for the
// client, as in x/crypto's queue.
const vpsRequestBacklog = 16

func newVPSRequests(c *conn, hopEnded <-chan struct{}) *vpsRequests {
	return &vpsRequests{c: c, queue: make(chan *gossh.Request, vpsRequestBacklog), hopEnded: hopEnded}
}

// push queues req for the client, starting the forwarding goroutine if none
// runs. If the queue is full it waits for room, or for the hop to end, in
// which case req is dropped: the VPS that sent it is gone.
func (q *vpsRequests) push(req *gossh.Request) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.running {
		q.running = true
		go q.drain()
	}
	select {
	case q.queue <- req:
	case <-q.hopEnded:
	}
}

// drain forwards queued requests until none is left.
func (q *vpsRequests) drain() {
	for {
		select {
		case req := <-q.queue:
			q.forward(req)
		default:
			q.mu.Lock()
			if len(q.queue) == 0 {
				q.running = false
				q.mu.Unlock()
				return
			}
			q.mu.Unlock()
		}
	}
}

// forward relays req and passes the client's reply back. Replies go back in
// the order the requests came (RFC 4254 4), so even the requests answered
// here wait their turn.
func (q *vpsRequests) forward(req *gossh.Request) {
	ok, payload := false, []byte(nil)
	// hostkeys-00@openssh.com is refused, not relayed: see reqHostKeys.
	if req.Type != reqHostKeys {
		if down := q.c.downstream(); down != nil {
			var err error
			ok, payload, err = down.SendRequest(req.Type, req.WantReply, req.Payload)
			if err != nil {
				ok = false
			}
		}
	}
	if req.WantReply {
		_ = req.Reply(ok, payload)
	}
}

// describeForward names a forward for the audit record, from the channel
// type or global request and its payload (RFC 4254 sections 7.1 and 7.2,
// OpenSSH PROTOCOL 2.4); "" for anything else.
func describeForward(kind string, payload []byte) string {
	switch kind {
	case "direct-tcpip", "tcpip-forward", "forwarded-tcpip":
		var p struct {
			Host string
			Port uint32
			Rest []byte `ssh:"rest"`
		}
		if gossh.Unmarshal(payload, &p) != nil {
			return kind
		}
		return fmt.Sprintf("%s %s", kind, net.JoinHostPort(printable(p.Host), strconv.FormatUint(uint64(p.Port), 10)))
	case "direct-streamlocal@openssh.com", "streamlocal-forward@openssh.com", "forwarded-streamlocal@openssh.com":
		var p struct {
			Path string
			Rest []byte `ssh:"rest"`
		}
		if gossh.Unmarshal(payload, &p) != nil {
			return kind
		}
		return kind + " " + printable(p.Path)
	}
	return ""
}
