package gateway

import (
	"bufio"
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// TestPTYShellFollowsResize runs the real ssh client on a pseudo-terminal,
// asks the VPS shell for its size, resizes the client's terminal and asks
// again: the window-change must reach the VPS's pty.
func TestPTYShellFollowsResize(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "tty", 0, key)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", g.sshArgs(key, g.port(), "-tt", "tty@127.0.0.1", "env PS1='$ ' TERM=dumb sh -i")...)
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tty.Close(); _ = cmd.Wait() }()

	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(tty)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	sizeRE := regexp.MustCompile(`SIZE=(\d+ \d+)`)
	askSize := func() string {
		t.Helper()
		if _, err := tty.Write([]byte("echo SIZE=$(stty size)\r")); err != nil {
			t.Fatal(err)
		}
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("ssh ended before printing the size")
				}
				// Skip the echoed command line; keep the output line.
				if m := sizeRE.FindStringSubmatch(l); m != nil && !strings.Contains(l, "$(") {
					return m[1]
				}
			case <-ctx.Done():
				t.Fatal("no size line")
			}
		}
	}
	if got := askSize(); got != "24 80" {
		t.Fatalf("stty size = %q, want 24 80", got)
	}
	if err := pty.Setsize(tty, &pty.Winsize{Rows: 51, Cols: 133}); err != nil {
		t.Fatal(err)
	}
	// SIGWINCH reaches ssh asynchronously: ask until the new size shows.
	deadline := time.Now().Add(10 * time.Second)
	for got := askSize(); got != "51 133"; got = askSize() {
		if time.Now().After(deadline) {
			t.Fatalf("stty size stayed %q after resize to 51x133", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, _ = tty.Write([]byte("exit 0\r"))
}
