package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/internal/testexec"
)

// socketDir returns a fresh private directory with a short path (unix
// socket paths are limited to 107 bytes; t.TempDir's can be longer).
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kr-relay-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startLocalAgent serves a Handler over targets on a ListenLocal socket.
func startLocalAgent(t *testing.T, targets *fakeTargets) (path string, h *Handler, logs *lockedBuffer) {
	t.Helper()
	path = filepath.Join(socketDir(t), "relay.sock")
	ln, err := ListenLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	a := serveAgent(t, ln, targets, nil)
	return path, a.h, a.logs
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

func TestHandoffRoundTrip(t *testing.T) {
	target := startTarget(t, echo)
	path, h, logs := startLocalAgent(t, &fakeTargets{addrs: map[string]string{taskA: target}})
	d := &Dialer{Token: testToken, Timeout: 5 * time.Second}
	c, err := d.DialLocal(t.Context(), path, taskA)
	if err != nil {
		t.Fatalf("DialLocal: %v", err)
	}
	defer c.Close()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("DialLocal returned %T, want the sshd's *net.TCPConn itself", c)
	}
	if got := tc.RemoteAddr().String(); got != target {
		t.Fatalf("handed-off socket is connected to %s, want the target %s", got, target)
	}
	// The agent keeps nothing of a handed-off connection: its slot is free
	// and closing the Handler leaves the connection alone.
	waitUntil(t, "the handoff's slot to be freed", func() bool { return h.Active() == 0 })
	h.Close()
	if !strings.Contains(logs.String(), "relay handed off") {
		t.Errorf("agent log has no \"relay handed off\":\n%s", logs)
	}

	want := bytes.Repeat([]byte("handoff "), 64<<10)
	go func() {
		tc.Write(want)
		tc.CloseWrite()
	}()
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(tc)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo through the handed-off socket: %d bytes, want %d equal ones", len(got), len(want))
	}
}

func TestHandoffRefusals(t *testing.T) {
	targets := &fakeTargets{
		addrs: map[string]string{taskA: closedAddr(t)},
		errs:  map[string]error{taskB: fmt.Errorf("stopped: %w", ErrNotRunning)},
	}
	path, _, _ := startLocalAgent(t, targets)
	const taskC = "1234567890123456791"
	cases := []struct {
		name, token, path, task string
		want                    error
	}{
		{"sshd down", testToken, path, taskA, ErrUnreachable},
		{"stopped", testToken, path, taskB, ErrNotRunning},
		{"unknown", testToken, path, taskC, ErrUnknownVPS},
		{"wrong token", "another-cluster-token-0123456789ab", path, taskA, ErrUnauthorized},
		{"no socket", testToken, filepath.Join(filepath.Dir(path), "absent.sock"), taskA, ErrAgentUnreachable},
		{"bad task id", testToken, path, "12", ErrBadRequest},
	}
	before := openFDs(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := &Dialer{Token: tc.token, Timeout: 5 * time.Second}
			c, err := d.DialLocal(t.Context(), tc.path, tc.task)
			if err == nil {
				c.Close()
				t.Fatal("DialLocal succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	waitUntil(t, "refusals to leave no descriptor open", func() bool { return openFDs(t) <= before })
}

// A handoff asked for over TCP is refused: only the local socket may give
// sockets away.
func TestHandoffOnlyOnLocalSocket(t *testing.T) {
	target := startTarget(t, echo)
	a := startAgent(t, &fakeTargets{addrs: map[string]string{taskA: target}}, nil)
	headers := []string{"Connection: Upgrade", "Upgrade: " + HandoffProtocol}
	status, msg := exchange(t, a.addr, signedRequest(t, testToken, "GET", PathPrefix+taskA, headers, nil))
	if status != http.StatusBadRequest || !strings.Contains(msg, "local socket") {
		t.Fatalf("handoff over TCP: %d %q, want 400 naming the local socket", status, msg)
	}
	if got := a.targets.lookups(); len(got) != 0 {
		t.Fatalf("the refused handoff looked up %v", got)
	}
}

func TestHandoffLeaksNoDescriptors(t *testing.T) {
	target := startTarget(t, echo)
	path, h, _ := startLocalAgent(t, &fakeTargets{addrs: map[string]string{taskA: target}})
	d := &Dialer{Token: testToken, Timeout: 5 * time.Second}
	// One handoff first, so that lazily opened descriptors (the poller)
	// are counted in the baseline.
	if c, err := d.DialLocal(t.Context(), path, taskA); err == nil {
		c.Close()
	}
	waitUntil(t, "the first handoff to end", func() bool { return h.Active() == 0 })
	before := openFDs(t)
	for i := range 40 {
		c, err := d.DialLocal(t.Context(), path, taskA)
		if err != nil {
			t.Fatalf("handoff %d: %v", i, err)
		}
		c.Close()
	}
	waitUntil(t, "descriptors to return to the baseline", func() bool { return h.Active() == 0 && openFDs(t) <= before })
}

// fakeHandoffAgent answers every request on a unix socket with answer and
// the descriptors fds() returns, as a broken or hostile agent might; a nil
// answer never answers, and waits for the caller to hang up. served gets a
// value after each connection is closed on the agent's side.
func fakeHandoffAgent(t *testing.T, answer []byte, fds func() []int) (path string, served <-chan struct{}) {
	t.Helper()
	path = filepath.Join(socketDir(t), "fake.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	servedc := make(chan struct{}, 16)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			uc := c.(*net.UnixConn)
			http.ReadRequest(bufio.NewReader(uc))
			if answer == nil {
				io.Copy(io.Discard, uc)
			} else {
				var oob []byte
				if fds != nil {
					if f := fds(); len(f) > 0 {
						oob = syscall.UnixRights(f...)
					}
				}
				uc.WriteMsgUnix(answer, oob, nil)
			}
			uc.Close()
			servedc <- struct{}{}
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return path, servedc
}

// A handoff that times out or is abandoned by its caller ends in an error,
// with no descriptor left open (a failed read once reached bufio as a
// negative count, which panics).
func TestDialLocalStalledAgent(t *testing.T) {
	path, served := fakeHandoffAgent(t, nil, nil)
	before := openFDs(t)
	d := &Dialer{Token: testToken, Timeout: 200 * time.Millisecond}
	if c, err := d.DialLocal(t.Context(), path, taskA); err == nil || !errors.Is(err, ErrAgentUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("DialLocal to a stalled agent: %v, want ErrAgentUnreachable and the deadline", err)
	}
	<-served
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	d.Timeout = time.Minute
	if c, err := d.DialLocal(ctx, path, taskA); err == nil || !errors.Is(err, context.Canceled) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("DialLocal abandoned by its caller: %v, want context.Canceled", err)
	}
	<-served
	waitUntil(t, "descriptors to return to the baseline", func() bool { return openFDs(t) <= before })
}

func TestDialLocalRejectsBadAnswers(t *testing.T) {
	tcpSock := func(t *testing.T) int {
		a, _ := tcpPair(t)
		f, err := a.(*net.TCPConn).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return int(f.Fd())
	}
	unixSock := func(t *testing.T) int {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Close(fds[0]); syscall.Close(fds[1]) })
		return fds[0]
	}
	cases := []struct {
		name   string
		answer []byte
		fds    func(t *testing.T) []int
		want   string
	}{
		{"no socket", handedOff, nil, "carried 0 sockets"},
		{"two sockets", handedOff, func(t *testing.T) []int { return []int{tcpSock(t), tcpSock(t)} }, "carried 2 sockets"},
		{"not tcp", handedOff, func(t *testing.T) []int { return []int{unixSock(t)} }, "not TCP"},
		{"stray bytes", append(append([]byte(nil), handedOff...), "SSH-2.0-x\r\n"...), func(t *testing.T) []int { return []int{tcpSock(t)} }, "stray bytes"},
		{"plain relay answer", switchingProtocols, func(t *testing.T) []int { return []int{tcpSock(t)} }, "not " + HandoffProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var fds []int
			if tc.fds != nil {
				fds = tc.fds(t)
			}
			path, served := fakeHandoffAgent(t, tc.answer, func() []int { return fds })
			before := openFDs(t)
			d := &Dialer{Token: testToken, Timeout: 5 * time.Second}
			c, err := d.DialLocal(t.Context(), path, taskA)
			if err == nil {
				c.Close()
				t.Fatal("DialLocal accepted the answer")
			}
			if !errors.Is(err, ErrAgentUnreachable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrAgentUnreachable saying %q", err, tc.want)
			}
			<-served // the fake agent's end of the connection is closed too
			if after := openFDs(t); after > before {
				t.Fatalf("%d descriptors open after the refusal, %d before: received sockets leaked", after, before)
			}
		})
	}
}

func TestListenLocal(t *testing.T) {
	dir := socketDir(t)
	path := filepath.Join(dir, "relay.sock")

	ln, err := ListenLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if _, err := ListenLocal(path); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second ListenLocal on a live socket: %v, want it refused", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatalf("Accept of our own uid: %v", err)
	}
	if _, ok := accepted.(*net.UnixConn); !ok {
		t.Fatalf("Accept returned %T, want the *net.UnixConn itself", accepted)
	}
	if uid, err := peerUID(accepted.(*net.UnixConn)); err != nil || uid != os.Geteuid() {
		t.Fatalf("peer uid %d, %v; want %d", uid, err, os.Geteuid())
	}
	accepted.Close()
	c.Close()
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Close: %v, want it removed", err)
	}

	// A socket left behind by an agent that died is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err = ListenLocal(path)
	if err != nil {
		t.Fatalf("ListenLocal over a stale socket: %v", err)
	}
	ln.Close()

	openDir := filepath.Join(dir, "open")
	if err := os.Mkdir(openDir, 0o755); err != nil {
		t.Fatal(err)
	}
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{"relay.sock", "not absolute"},
		{"/" + strings.Repeat("x", MaxSocketPath), "unix sockets allow"},
		{filepath.Join(openDir, "relay.sock"), "open to other users"},
		{regular, "not a socket"},
	} {
		if ln, err := ListenLocal(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("ListenLocal(%q) = %v, want an error saying %q", tc.path, err, tc.want)
		}
	}
	if got, err := os.ReadFile(regular); err != nil || len(got) != 0 {
		t.Errorf("the regular file in the way was changed: %v", err)
	}
}

// envListenAs makes the test binary a child that listens on the unix socket
// it names and accepts until killed (see TestDialLocalChecksListenerUID).
const envListenAs = "KOHAKURIVER_RELAY_TEST_LISTEN"

func listenAsChild(path string) int {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("listening")
	held := make(chan net.Conn, 64) // open until killed
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		held <- c
	}
}

// A socket served by another user is not trusted to hand sockets over,
// whatever path a node reports: the dialer checks the listener's uid.
func TestDialLocalChecksListenerUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a listener as another user")
	}
	// The child runs as nobody: it needs to execute a copy of this binary
	// and to bind in a directory it may write.
	dir := socketDir(t)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	copyPath := testexec.CopyForOthers(t, dir)
	path := filepath.Join(dir, "nobody.sock")
	cmd := exec.Command(copyPath, "-test.run=^$")
	cmd.Env = append(os.Environ(), envListenAs+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "listening\n" {
		t.Fatalf("listener child: %q %v", line, err)
	}

	d := &Dialer{Token: testToken, Timeout: 5 * time.Second}
	c, err := d.DialLocal(t.Context(), path, taskA)
	if err == nil {
		c.Close()
		t.Fatal("DialLocal trusted a socket served by uid 65534")
	}
	if !errors.Is(err, ErrAgentUnreachable) || !strings.Contains(err.Error(), "uid 65534") {
		t.Fatalf("err = %v, want ErrAgentUnreachable naming uid 65534", err)
	}
}
