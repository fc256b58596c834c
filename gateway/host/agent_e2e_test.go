package host

import (
	"bufio"
	"context"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAgentRestartMidSession: killing one node's agent ends its sessions
// cleanly, the other node's session carries on, and after the agent comes
// back (re-adopting its running containers) new logins work at once.
func TestAgentRestartMidSession(t *testing.T) {
	n1, n2 := nodeName(t, "n1"), nodeName(t, "n2")
	c := newCluster(t, n1, n2)
	carol := c.userClient("carol")
	key := newUserKey(t)
	v1 := c.createVPS(carol, n1, "one", key)
	v2 := c.createVPS(carol, n2, "two", key)
	if v1.Node != n1 || v2.Node != n2 {
		t.Fatalf("placement: %s on %s, %s on %s", v1.Ref(), v1.Node, v2.Ref(), v2.Node)
	}

	// Two long sessions that echo lines back.
	s1 := c.startEcho(key, "one")
	s2 := c.startEcho(key, "two")
	s1.roundTrip(t, "a")
	s2.roundTrip(t, "a")

	// Kill n1's agent: its session ends with an exit, not a hang.
	c.agents[n1].stop()
	switch err := s1.waitExit(30 * time.Second); {
	case err == context.DeadlineExceeded:
		t.Fatal("session on the killed node hangs")
	case err == nil:
		t.Fatal("session on the killed node exited 0")
	}
	s2.roundTrip(t, "b") // the other node is untouched

	// The agent comes back on its old address and re-adopts the VPS.
	c.startAgent(n1, c.agents[n1].addr)
	c.waitNode(n1, "online")
	out, errOut, code := c.ssh(key, 0, "one", "", "echo back")
	if code != 0 || out != "back\n" {
		t.Fatalf("after agent restart: %d %q %q", code, out, errOut)
	}
	s2.roundTrip(t, "c")
	s2.close()
}

type echoSession struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	done  chan error
}

// startEcho runs `ssh VPS cat` and keeps it open.
func (c *cluster) startEcho(key userKey, user string) *echoSession {
	c.t.Helper()
	port := c.host.SSHAddr().(*net.TCPAddr).Port
	cmd := exec.Command("ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile="+c.known, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-i", key.path, "-p", strconv.Itoa(port), user+"@127.0.0.1", "cat")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	s := &echoSession{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout), done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	c.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		err := <-s.done
		if c.t.Failed() {
			c.t.Logf("ssh %s: %v, stderr: %s", user, err, stderr.String())
		}
	})
	return s
}

func (s *echoSession) roundTrip(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(s.stdin, line+"\n"); err != nil {
		t.Fatalf("write %q: %v", line, err)
	}
	got := make(chan string, 1)
	go func() { l, _ := s.out.ReadString('\n'); got <- l }()
	select {
	case l := <-got:
		if strings.TrimSpace(l) != line {
			t.Fatalf("echo of %q = %q", line, l)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no echo of %q", line)
	}
}

func (s *echoSession) waitExit(max time.Duration) error {
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(max):
		return context.DeadlineExceeded
	}
}

func (s *echoSession) close() { s.stdin.Close() }
