package gateway

import (
	"net"
	"strings"
	"testing"
	"time"
)

// silentUpstream accepts connections and, per mode, closes them at once
// ("close") or holds them without a word ("silent"), until the test ends.
func silentUpstream(t *testing.T, mode string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if mode == "close" {
				c.Close()
				continue
			}
			held = append(held, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range held {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestHopFailureMessages: what the user reads when the VPS's sshd does not
// complete the login. A silent sshd is a timeout whichever of the socket
// deadline and the context fires first (they are the same instant); an
// sshd that hangs up is not reported as refusing the user. Several
// attempts, because the first case is a race.
func TestHopFailureMessages(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.HopTimeout = 300 * time.Millisecond })
	key := newUserKey(t)
	hostKey := strings.TrimSpace(newUserKey(t).auth.Line)
	g.registerUpstream(t, "silent", silentUpstream(t, "silent"), []string{hostKey}, key)
	g.registerUpstream(t, "hangup", silentUpstream(t, "close"), []string{hostKey}, key)
	for _, tt := range []struct{ vps, want string }{
		{"silent", "timed out logging in to VPS silent"},
		{"hangup", "the sshd of VPS hangup ended the connection during the login"},
	} {
		for i := 0; i < 5; i++ {
			_, errOut, code := runSSH(t, nil, g.sshArgs(key, g.port(), tt.vps+"@127.0.0.1", "true")...)
			if code == 0 || !strings.Contains(errOut, tt.want) {
				t.Fatalf("%s, attempt %d: exit %d, stderr %q; want a failure saying %q", tt.vps, i+1, code, errOut, tt.want)
			}
		}
	}
}

// TestPipesRefusedAfterHopEnd: once the hop has ended and waitPipes runs,
// no channel pair may start (a WaitGroup must not go up from zero while
// Wait runs); pairs already open are waited for.
func TestPipesRefusedAfterHopEnd(t *testing.T) {
	var c conn
	if !c.addPipe() {
		t.Fatal("a pair was refused before the hop ended")
	}
	waited := make(chan struct{})
	go func() { c.waitPipes(time.Minute); close(waited) }()
	for {
		c.pipesMu.Lock()
		closed := c.pipesClosed
		c.pipesMu.Unlock()
		if closed {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if c.addPipe() {
		t.Fatal("a pair was admitted while waitPipes runs")
	}
	select {
	case <-waited:
		t.Fatal("waitPipes returned while a pair was open")
	case <-time.After(50 * time.Millisecond):
	}
	c.pipes.Done()
	<-waited
}
