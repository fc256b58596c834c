package gateway

// vpsRequests between two SSH connections made in the test (the VPS's
// sshd -> the hop, the gateway -> the client): order, replies with their
// payload, the host key announcement kept back, no hold-up while a client
// is slow to reply, no goroutine left once the queue is empty, and a full
// queue that gives way when the hop ends.

import (
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

func TestVPSRequests(t *testing.T) {
	// The client's end and the gateway's end toward it.
	_, clientReqs, gwDown, _ := testConnPair(t)
	// The hop's end and the VPS's end.
	_, hopReqs, vps, _ := testConnPair(t)

	c := &conn{downReady: make(chan struct{})}
	c.setDownstream(gwDown)
	q := newVPSRequests(c, nil)
	pushed := make(chan string, 8)
	go func() {
		for req := range hopReqs {
			q.push(req)
			pushed <- req.Type
		}
	}()

	// The VPS asks for a reply; the client takes its time.
	type reply struct {
		ok      bool
		payload string
		err     error
	}
	first := make(chan reply, 1)
	go func() {
		ok, payload, err := vps.SendRequest("keepalive@openssh.com", true, []byte("one"))
		first <- reply{ok, string(payload), err}
	}()
	slow := within(t, "the first request at the client", func() *gossh.Request { return <-clientReqs })
	if slow.Type != "keepalive@openssh.com" || string(slow.Payload) != "one" {
		t.Fatalf("client got %s %q first", slow.Type, slow.Payload)
	}
	// Meanwhile the hop's requests keep being taken in: nothing else
	// (channel opens, the end of the hop) waits on this client.
	for _, r := range []struct{ kind, payload string }{{reqHostKeys, "keys"}, {"x-two@example.com", "two"}, {"x-three@example.com", "three"}} {
		if _, _, err := vps.SendRequest(r.kind, false, []byte(r.payload)); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"keepalive@openssh.com", reqHostKeys, "x-two@example.com", "x-three@example.com"} {
		if got := within(t, "push of "+want, func() string { return <-pushed }); got != want {
			t.Fatalf("pushed %s, want %s", got, want)
		}
	}
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
	if r := within(t, "reply at the VPS", func() reply { return <-first }); r.err != nil || !r.ok || r.payload != "pong" {
		t.Fatalf("VPS got %+v, want ok with payload pong", r)
	}
	for _, want := range []string{"two", "three"} {
		req := within(t, "request "+want+" at the client", func() *gossh.Request { return <-clientReqs })
		if string(req.Payload) != want {
			t.Fatalf("client got %s %q, want payload %q (the host key announcement must not be relayed)", req.Type, req.Payload, want)
		}
	}

	// A refusal comes back as a refusal.
	go func() {
		ok, payload, err := vps.SendRequest("x-four@example.com", true, nil)
		first <- reply{ok, string(payload), err}
	}()
	req := within(t, "request four at the client", func() *gossh.Request { return <-clientReqs })
	_ = req.Reply(false, nil)
	if r := within(t, "refusal at the VPS", func() reply { return <-first }); r.err != nil || r.ok {
		t.Fatalf("VPS got %+v, want a refusal", r)
	}

	// With nothing queued, the forwarding goroutine is gone.
	deadline := time.Now().Add(10 * time.Second)
	for {
		q.mu.Lock()
		running := q.running
		q.mu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the forwarding goroutine still runs with nothing queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestVPSRequestsFullQueueGivesWayAtHopEnd: a client that never answers
// fills the queue, and the next push waits for room; when the hop ends,
// that push returns, so relayUpstream gets to see the end of the hop.
func TestVPSRequestsFullQueueGivesWayAtHopEnd(t *testing.T) {
	_, clientReqs, gwDown, _ := testConnPair(t)
	_, hopReqs, vps, _ := testConnPair(t)
	c := &conn{downReady: make(chan struct{})}
	c.setDownstream(gwDown)
	hopEnded := make(chan struct{})
	q := newVPSRequests(c, hopEnded)
	pushed := make(chan int, 2*vpsRequestBacklog)
	go func() {
		n := 0
		for req := range hopReqs {
			q.push(req)
			n++
			pushed <- n
		}
	}()

	go func() { _, _, _ = vps.SendRequest("keepalive@openssh.com", true, nil) }()
	// Never answered: the client is suspended.
	within(t, "the first request at the client", func() *gossh.Request { return <-clientReqs })
	// One in flight, a full queue behind it, and one more that must wait.
	for range vpsRequestBacklog + 1 {
		if _, _, err := vps.SendRequest("x-more@example.com", false, nil); err != nil {
			t.Fatal(err)
		}
	}
	for want := 1; want <= vpsRequestBacklog+1; want++ {
		if got := within(t, "a push", func() int { return <-pushed }); got != want {
			t.Fatalf("push %d, want %d", got, want)
		}
	}
	select {
	case n := <-pushed:
		t.Fatalf("push %d returned with the queue full and the client silent", n)
	case <-time.After(200 * time.Millisecond):
	}
	close(hopEnded)
	if got := within(t, "the waiting push after the hop ended", func() int { return <-pushed }); got != vpsRequestBacklog+2 {
		t.Fatalf("push %d, want %d", got, vpsRequestBacklog+2)
	}
}
