package gateway

// relayFromVPS between two SSH connections made in the test (the VPS's sshd
// -> the hop, the gateway -> the client): requests in order with their
// replies and payloads, the host key announcement kept back, channel opens
// served while a client is slow to reply and while requests are backed up,
// and the end of the hop seen whatever the client does.

import (
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

type vpsReply struct {
	ok      bool
	payload string
	err     error
}

// fromVPSFixture runs relayFromVPS on a hop whose VPS end the test drives,
// toward a client whose requests the test answers.
type fromVPSFixture struct {
	vps        *gossh.ServerConn
	clientReqs <-chan *gossh.Request
	opened     chan string   // channel types the VPS opened, as relayFromVPS saw them
	ended      chan struct{} // closed when relayFromVPS returned
}

func newFromVPSFixture(t *testing.T) *fromVPSFixture {
	t.Helper()
	down := testConnPair(t) // client end, gateway end
	hop := testConnPair(t)  // gateway's hop, VPS end
	go rejectChannels(down.clientChans)
	go rejectChannels(hop.serverChans)
	c := &conn{downReady: make(chan struct{})}
	c.setDownstream(down.server)
	f := &fromVPSFixture{vps: hop.server, clientReqs: down.clientReqs, opened: make(chan string, 8), ended: make(chan struct{})}
	open := func(nc gossh.NewChannel) {
		f.opened <- nc.ChannelType()
		_ = nc.Reject(gossh.Prohibited, "seen")
	}
	go func() {
		defer close(f.ended)
		relayFromVPS(hop.clientChans, hop.clientReqs, open, c.forwardFromVPS)
	}()
	return f
}

// sendAsync sends a global request from the VPS and delivers the reply.
func (f *fromVPSFixture) sendAsync(kind string, wantReply bool, payload string) <-chan vpsReply {
	r := make(chan vpsReply, 1)
	go func() {
		ok, p, err := f.vps.SendRequest(kind, wantReply, []byte(payload))
		r <- vpsReply{ok, string(p), err}
	}()
	return r
}

// channelOpenIsServed has the VPS open a channel and checks that
// relayFromVPS took it (and refused it, as the test's open does).
func (f *fromVPSFixture) channelOpenIsServed(t *testing.T, when string) {
	t.Helper()
	err := within(t, when+": channel open from the VPS", func() error {
		_, _, err := f.vps.OpenChannel("forwarded-tcpip", nil)
		return err
	})
	if oce, ok := err.(*gossh.OpenChannelError); !ok || oce.Message != "seen" {
		t.Fatalf("%s: channel open from the VPS: %v, want the test's refusal", when, err)
	}
	if got := within(t, "open", func() string { return <-f.opened }); got != "forwarded-tcpip" {
		t.Fatalf("%s: opened %q", when, got)
	}
}

func TestRelayFromVPS(t *testing.T) {
	f := newFromVPSFixture(t)

	// The VPS asks for a reply; the client takes its time.
	first := f.sendAsync("keepalive@openssh.com", true, "one")
	slow := within(t, "the first request at the client", func() *gossh.Request { return <-f.clientReqs })
	if slow.Type != "keepalive@openssh.com" || string(slow.Payload) != "one" {
		t.Fatalf("client got %s %q first", slow.Type, slow.Payload)
	}
	// Meanwhile more requests come and channel opens are served.
	for _, r := range []struct{ kind, payload string }{{reqHostKeys, "keys"}, {"x-two@example.com", "two"}, {"x-three@example.com", "three"}} {
		if _, _, err := f.vps.SendRequest(r.kind, false, []byte(r.payload)); err != nil {
			t.Fatal(err)
		}
	}
	f.channelOpenIsServed(t, "while the client is slow to reply")
	select {
	case r := <-first:
		t.Fatalf("the VPS got a reply (%+v) before the client gave one", r)
	default:
	}

	// The client's answer, payload included, reaches the VPS; the rest
	// follows in order, without the host key announcement.
	if err := slow.Reply(true, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if r := within(t, "reply at the VPS", func() vpsReply { return <-first }); r.err != nil || !r.ok || r.payload != "pong" {
		t.Fatalf("VPS got %+v, want ok with payload pong", r)
	}
	for _, want := range []string{"two", "three"} {
		req := within(t, "request "+want+" at the client", func() *gossh.Request { return <-f.clientReqs })
		if string(req.Payload) != want {
			t.Fatalf("client got %s %q, want payload %q (the host key announcement must not be relayed)", req.Type, req.Payload, want)
		}
	}

	// A refusal comes back as a refusal.
	fourth := f.sendAsync("x-four@example.com", true, "")
	req := within(t, "request four at the client", func() *gossh.Request { return <-f.clientReqs })
	_ = req.Reply(false, nil)
	if r := within(t, "refusal at the VPS", func() vpsReply { return <-fourth }); r.err != nil || r.ok {
		t.Fatalf("VPS got %+v, want a refusal", r)
	}
}

// TestRelayFromVPSBackedUp: a client that never answers backs the VPS's
// requests up until relayFromVPS stops taking them (maxQueuedRequests
// waiting); channel opens are still served, and when the hop ends
// relayFromVPS returns. (Past that, x/crypto's own queue of the hop's
// requests fills and stalls the whole hop, as it would with any reader
// that stops.)
func TestRelayFromVPSBackedUp(t *testing.T) {
	f := newFromVPSFixture(t)
	f.sendAsync("keepalive@openssh.com", true, "")
	// Never answered: the client is suspended.
	within(t, "the first request at the client", func() *gossh.Request { return <-f.clientReqs })
	for range maxQueuedRequests {
		if _, _, err := f.vps.SendRequest("x-more@example.com", false, nil); err != nil {
			t.Fatal(err)
		}
	}
	f.channelOpenIsServed(t, "with requests backed up")
	f.vps.Close()
	within(t, "relayFromVPS to return after the hop ended", func() struct{} { <-f.ended; return struct{}{} })
}
