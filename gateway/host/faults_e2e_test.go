package host

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/kohakuriver/kohakuriver/agent/docker"
)

// TestContainerKilledMidTransfer: when the VPS's container dies under a
// running transfer, the client gets exit status 255 and a line saying
// what happened, not a hang or a bare disconnect.
func TestContainerKilledMidTransfer(t *testing.T) {
	n1 := nodeName(t, "n1")
	c := newCluster(t, n1)
	dave := c.userClient("dave")
	key := newUserKey(t)
	v := c.createVPS(dave, n1, "doomed", key)

	port := c.host.SSHAddr().(*net.TCPAddr).Port
	cmd := exec.Command("ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile="+c.known, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-i", key.path, "-p", strconv.Itoa(port), "doomed@127.0.0.1", "cat > /dev/null")
	stdin, _ := cmd.StdinPipe()
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	// Keep data flowing until the session ends.
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := stdin.Write(buf); err != nil {
				return
			}
		}
	}()
	time.Sleep(time.Second) // the transfer is under way

	dc, err := client.New(client.FromEnv)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if _, err := dc.ContainerKill(context.Background(), docker.ContainerName(v.TaskID), client.ContainerKillOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 255 {
			t.Fatalf("ssh ended with %v, want exit status 255", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("ssh still running a minute after its container was killed")
	}
	if !strings.Contains(stderr.String(), "the connection to VPS doomed was lost") {
		t.Fatalf("stderr does not say what happened: %q", stderr.String())
	}
}

// TestForwardsResolveInsideTheVPS: -W and -L targets are dialled by the
// VPS's sshd from inside the container, so 127.0.0.1 is the VPS itself and
// the host's own services (its API here) are out of reach.
func TestForwardsResolveInsideTheVPS(t *testing.T) {
	n1 := nodeName(t, "n1")
	c := newCluster(t, n1)
	erin := c.userClient("erin")
	key := newUserKey(t)
	c.createVPS(erin, n1, "inside", key)

	// The host API answers on the host's loopback...
	apiAddr := c.host.APIAddr().String()
	if conn, err := net.Dial("tcp", apiAddr); err != nil {
		t.Fatal(err)
	} else {
		conn.Close()
	}
	// ...but not from inside the VPS.
	if out, _, code := c.sshOpts(key, 0, "inside", "", []string{"-W", apiAddr}); code == 0 || strings.Contains(out, "HTTP") {
		t.Fatalf("ssh -W reached the host's API through the gateway (%d %q)", code, out)
	}
	// 127.0.0.1:22 seen from inside is the VPS's own sshd.
	out, errOut, code := c.sshOpts(key, 0, "inside", "", []string{"-W", "127.0.0.1:22"})
	if !strings.HasPrefix(out, "SSH-2.0-OpenSSH") {
		t.Fatalf("ssh -W 127.0.0.1:22: %d %q %q; want the VPS sshd's banner", code, out, errOut)
	}
}
