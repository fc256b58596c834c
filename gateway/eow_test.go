package gateway

import (
	"bufio"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// eow@openssh.com ("end of write") tells the peer that this side will
// write no more of a channel's data: OpenSSH sends it when the local
// consumer of the data went away. Both OpenSSH ends send it only to a peer
// whose version string says OpenSSH, so the gateway must say so on both
// hops for it to pass through at all.

// TestEndOfWriteFromClient is `ssh vps yes | head -1`: head exits, ssh's
// stdout write fails, ssh sends eow@openssh.com, and the VPS's sshd closes
// yes's stdout, which ends it with SIGPIPE. Without eow reaching the sshd,
// yes would run (and its output cross both hops) forever.
func TestEndOfWriteFromClient(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "eow", 0, key)
	cmd := execSSH(g.sshArgs(key, g.port(), "-n", "eow@127.0.0.1", "yes")...)
	errb := &syncBuffer{}
	cmd.Stderr = errb
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "y\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("first line %q, %v; stderr %s", line, err, errb.String())
	}
	out.Close() // what head does after its one line
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		// sshd reports yes's death by SIGPIPE; ssh turns an exit signal
		// into status 255.
		if err == nil {
			t.Fatalf("ssh exited 0; want yes killed by SIGPIPE; stderr %s", errb.String())
		}
		t.Logf("ssh: %v", err)
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("yes still running a minute after the client stopped reading: eow@openssh.com did not reach the VPS; stderr %s", errb.String())
	}
}

// TestEndOfWriteFromVPS: a command that closes its stdin makes the VPS's
// sshd fail its next write to it and send eow@openssh.com, which the client
// must receive, as it does from the sshd directly.
func TestEndOfWriteFromVPS(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	_, d := g.addVPS(t, "eow", 0, key)
	for _, ep := range endpoints(g, d, key, "eow") {
		t.Run(ep.name, func(t *testing.T) {
			c, chans, reqs := ep.dial(t, "SSH-2.0-OpenSSH_9.2p1")
			go gossh.DiscardRequests(reqs)
			go rejectChannels(chans)
			ch, chReqs, err := c.OpenChannel("session", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ch.Close()
			seen := make(chan string, 16)
			go func() {
				for req := range chReqs {
					if req.WantReply {
						_ = req.Reply(false, nil)
					}
					seen <- req.Type
				}
				close(seen)
			}()
			cmd := gossh.Marshal(struct{ Cmd string }{"exec 0<&-; echo ready; sleep 30"})
			if ok, err := ch.SendRequest("exec", true, cmd); !ok || err != nil {
				t.Fatalf("exec: %v %v", ok, err)
			}
			ready, err := bufio.NewReader(ch).ReadString('\n')
			if err != nil || ready != "ready\n" {
				t.Fatalf("read %q, %v", ready, err)
			}
			// stdin is closed in the VPS now: this write fails there.
			if _, err := ch.Write([]byte("nobody reads this\n")); err != nil {
				t.Fatal(err)
			}
			var got []string
			deadline := time.After(20 * time.Second)
			for {
				select {
				case typ, ok := <-seen:
					if !ok {
						t.Fatalf("channel ended; requests seen: %v", got)
					}
					got = append(got, typ)
					if typ == "eow@openssh.com" {
						return
					}
				case <-deadline:
					t.Fatalf("no eow@openssh.com within 20 s; requests seen: [%s]", strings.Join(got, " "))
				}
			}
		})
	}
}
