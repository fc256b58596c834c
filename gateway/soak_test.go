package gateway

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// TestSoak keeps N concurrent sessions moving checksummed data through the
// gateway for a while: every byte must come back intact, and when they end
// the gateway's goroutines and heap return to where they started.
//
// The CI run is short (KOHAKURIVER_SOAK_SESSIONS=40, 5 s by default);
// `just soak` runs 2,000 sessions for 2 minutes. Both are bounded: every
// session stops at the deadline.
func TestSoak(t *testing.T) {
	sessions := envInt("KOHAKURIVER_SOAK_SESSIONS", 40)
	duration := time.Duration(envInt("KOHAKURIVER_SOAK_SECONDS", 5)) * time.Second
	g := newTestGateway(t, func(c *Config) { c.Throttle.MaxFailures = -1 })
	key := newUserKey(t)
	// sshd drops unauthenticated connections past MaxStartups; the soak
	// opens them all at once on purpose.
	v, _ := g.addVPSWithConfig(t, "soak", fmt.Sprintf("MaxStartups %d\nMaxSessions 10", sessions+10), key)
	_ = v

	runtime.GC()
	baseGoroutines := runtime.NumGoroutine()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	var moved, corrupt, failed atomic.Int64
	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for i := 0; i < sessions; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, bad, err := soakSession(g, key, "soak", deadline)
			moved.Add(n)
			corrupt.Add(bad)
			if err != nil {
				failed.Add(1)
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d sessions moved %d MiB in %v; %d corrupt chunks, %d failed sessions",
		sessions, moved.Load()>>20, duration, corrupt.Load(), failed.Load())
	if corrupt.Load() != 0 || failed.Load() != 0 || moved.Load() == 0 {
		t.Fatalf("soak: %d corrupt, %d failed, %d bytes", corrupt.Load(), failed.Load(), moved.Load())
	}
	waitFor(t, "connections to close", func() bool { return g.srv.ActiveConns() == 0 })
	waitFor(t, "goroutines back to baseline", func() bool {
		runtime.GC()
		return runtime.NumGoroutine() <= baseGoroutines+5
	})
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	// Flat: what is left after the sessions is small next to what they used.
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 32<<20 {
		t.Fatalf("heap in use grew by %d MiB after the soak", grew>>20)
	}
}

// soakSession runs `cat` in the VPS and round-trips random chunks until
// the deadline, counting bytes and mismatches.
func soakSession(g *testGateway, key userKey, user string, deadline time.Time) (moved, corrupt int64, err error) {
	client, err := gossh.Dial("tcp", g.srv.Addr().String(), &gossh.ClientConfig{
		User: user, Auth: []gossh.AuthMethod{gossh.PublicKeys(key.signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 60 * time.Second,
	})
	if err != nil {
		return 0, 0, fmt.Errorf("dial: %w", err)
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return 0, 0, fmt.Errorf("session: %w", err)
	}
	defer sess.Close()
	stdin, _ := sess.StdinPipe()
	stdout, _ := sess.StdoutPipe()
	if err := sess.Start("cat"); err != nil {
		return 0, 0, fmt.Errorf("start: %w", err)
	}
	chunk := make([]byte, 32<<10)
	back := make([]byte, len(chunk))
	for time.Now().Before(deadline) {
		_, _ = rand.Read(chunk)
		if _, err := stdin.Write(chunk); err != nil {
			return moved, corrupt, fmt.Errorf("write: %w", err)
		}
		if _, err := io.ReadFull(stdout, back); err != nil {
			return moved, corrupt, fmt.Errorf("read: %w", err)
		}
		if !bytes.Equal(chunk, back) {
			corrupt++
		}
		moved += int64(len(chunk))
	}
	stdin.Close()
	if err := sess.Wait(); err != nil {
		return moved, corrupt, fmt.Errorf("cat exit: %w", err)
	}
	return moved, corrupt, nil
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
