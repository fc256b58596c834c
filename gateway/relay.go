package gateway

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
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
// starts relaying the pair. The twin is opened first so that a refusal
// (connect failed inside the VPS, agent forwarding not requested...)
// reaches the opener with the other side's reason and message.
//
// The relay runs on a goroutine of its own, and the caller's ends here:
// opening and accepting write SSH packets (cipher, socket), which grows a
// goroutine's stack to 4 KiB, and a parked goroutine's stack only halves
// at a GC while under a quarter of it, guard included, is in use, which
// never happens here. The pair's loop waits out the channel's life and
// calls little, so it mostly keeps the 2 KiB it starts with (nine in ten
// did in gateway/bench's 500 sessions; the rest met a deeper path, such as
// an allocation that had to refill its cache, and doubled).
func (c *conn) openPair(nc gossh.NewChannel, other gossh.Conn, from string) {
	if !c.addPipe() {
		_ = nc.Reject(gossh.ConnectionFailed, "kohakuriver: the connection to the VPS has ended")
		return
	}
	limit := c.srv.limits().MaxChannels
	if int(c.channels.Add(1)) > limit {
		c.channels.Add(-1)
		c.pipes.Done()
		c.log.Warn("channel refused: limit reached", "type", nc.ChannelType(), "from", from, "limit", limit)
		_ = nc.Reject(gossh.ResourceShortage, fmt.Sprintf("kohakuriver: too many channels on this connection (limit %d)", limit))
		return
	}
	c.srv.metrics.channel(1)
	release := func() {
		c.srv.metrics.channel(-1)
		c.channels.Add(-1)
		c.pipes.Done()
	}
	twin, twinReqs, err := other.OpenChannel(nc.ChannelType(), nc.ExtraData())
	if err != nil {
		if oce, ok := err.(*gossh.OpenChannelError); ok {
			_ = nc.Reject(oce.Reason, oce.Message)
		} else {
			_ = nc.Reject(gossh.ConnectionFailed, "kohakuriver: the other side is gone")
		}
		c.log.Debug("channel refused", "type", nc.ChannelType(), "from", from, "err", err)
		release()
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		twin.Close()
		go gossh.DiscardRequests(twinReqs)
		release()
		return
	}
	c.log.Debug("channel open", "type", nc.ChannelType(), "from", from)
	if f := describeForward(nc.ChannelType(), nc.ExtraData()); f != "" {
		c.recordForward(f)
	}
	loop, cleanup := c.prepareRelay(ch, reqs, twin, twinReqs, nc.ChannelType() == "session" && from == "client", from == "client")
	go func() {
		defer release()
		defer cleanup()
		loop.run()
	}()
}

// prepareRelay sets up the bridge of an accepted channel ch and its twin on
// the other connection: the taps, session tracking and recording for a
// client's session. cleanup is for after the loop ended.
func (c *conn) prepareRelay(ch gossh.Channel, reqs <-chan *gossh.Request, twin gossh.Channel, twinReqs <-chan *gossh.Request, clientSession, fromClient bool) (loop *bridgeLoop, cleanup func()) {
	toVPS, toClient := pairTaps(clientSession)
	// Requests from the VPS side carry exit-status and exit-signal.
	toClient.onRequest = c.noteExit
	var rec *recording
	if clientSession {
		c.trackSession(ch, true)
		c.explainLostVPS(&toClient)
		if rec = c.srv.newRecording(c); rec != nil {
			toVPS.onRequest, toVPS.data = rec.observe, rec.input()
			toClient.data = rec.output()
		}
	}
	cleanup = func() {
		if rec != nil {
			rec.close()
		}
		if clientSession {
			c.trackSession(ch, false)
		}
	}
	if fromClient {
		return newBridge(ch, reqs, twin, twinReqs, &toVPS, &toClient), cleanup
	}
	return newBridge(twin, twinReqs, ch, reqs, &toVPS, &toClient), cleanup
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

// forwardFromVPS relays one of the VPS's global requests to the client and
// the client's reply back, except hostkeys-00@openssh.com, refused here.
// Replies must go back in the order the requests came (RFC 4254 4), so
// relayFromVPS runs these one at a time, in order, even the refusals.
func (c *conn) forwardFromVPS(req *gossh.Request) {
	ok, payload := false, []byte(nil)
	// hostkeys-00@openssh.com is refused, not relayed: see reqHostKeys.
	if req.Type != reqHostKeys {
		if down := c.downstream(); down != nil {
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
