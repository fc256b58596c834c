package gateway

import (
	"crypto/rand"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHostileConnections: garbage, silence and a slowloris handshake on the
// main port and a VPS port are all cut by the login grace time, nothing
// panics, and the gateway's goroutines return to their baseline.
func TestHostileConnections(t *testing.T) {
	g := newTestGateway(t, func(c *Config) {
		c.LoginGraceTime = time.Second
		c.Throttle.MaxFailures = -1
	})
	key := newUserKey(t)
	vpsPort := freePort(t)
	g.addVPS(t, "target", vpsPort, key)
	waitPortListening(t, g.srv, vpsPort)
	runtime.GC()
	baseline := runtime.NumGoroutine()

	kinds := map[string]func(c net.Conn){
		"random bytes": func(c net.Conn) {
			b := make([]byte, 4096)
			_, _ = rand.Read(b)
			_, _ = c.Write(b)
		},
		"silent": func(net.Conn) {},
		"slowloris": func(c net.Conn) {
			for _, ch := range "SSH-2.0-slow\r\n" {
				if _, err := c.Write([]byte(string(ch))); err != nil {
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		},
		"banner then garbage": func(c net.Conn) {
			_, _ = c.Write([]byte("SSH-2.0-x\r\n"))
			junk := make([]byte, 1<<16)
			_, _ = rand.Read(junk)
			_, _ = c.Write(junk)
		},
	}
	var wg sync.WaitGroup
	closed := make(chan string, 100)
	for _, addr := range []string{g.srv.Addr().String(), net.JoinHostPort("127.0.0.1", strconv.Itoa(vpsPort))} {
		for name, behave := range kinds {
			for i := 0; i < 5; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := net.Dial("tcp", addr)
					if err != nil {
						closed <- name + ": dial " + err.Error()
						return
					}
					defer c.Close()
					behave(c)
					// The gateway must hang up by itself, well within a bound.
					_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
					buf := make([]byte, 4096)
					for {
						if _, err := c.Read(buf); err != nil {
							if ne, ok := err.(net.Error); ok && ne.Timeout() {
								closed <- name + ": not closed by the gateway"
							}
							return
						}
					}
				}()
			}
		}
	}
	wg.Wait()
	close(closed)
	for msg := range closed {
		t.Error(msg)
	}
	waitFor(t, "hostile connections to be gone", func() bool { return g.srv.ActiveConns() == 0 })
	waitFor(t, "goroutines back to baseline", func() bool {
		runtime.GC()
		return runtime.NumGoroutine() <= baseline+5
	})
	// And the gateway still serves.
	if out, _, code := runSSH(t, nil, g.sshArgs(key, g.port(), "target@127.0.0.1", "echo alive")...); code != 0 || out != "alive\n" {
		t.Fatalf("after the attack: %d %q", code, out)
	}
}

// TestChannelFlood: 10,000 channel opens on one connection; those past the
// per-connection limit are refused with a message, quickly, and the ones
// within it work.
func TestChannelFlood(t *testing.T) {
	const limit = 64
	g := newTestGateway(t, func(c *Config) { c.MaxChannels = limit })
	key := newUserKey(t)
	g.addVPS(t, "flood", 0, key)
	target := echoServer(t)
	client := dialGo(t, g, key, "flood")

	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	refused := 0
	for i := 0; i < 10000; i++ {
		c, err := client.Dial("tcp", target)
		if err != nil {
			if !strings.Contains(err.Error(), "too many channels") {
				t.Fatalf("open %d: unexpected error %v", i, err)
			}
			refused++
			continue
		}
		open = append(open, c)
	}
	if len(open) != limit || refused != 10000-limit {
		t.Fatalf("%d channels open, %d refused; want %d and %d", len(open), refused, limit, 10000-limit)
	}
	// The open ones carry data.
	expectEcho(t, func() (net.Conn, error) { return open[0], nil })
}
