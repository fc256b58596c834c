//go:build linux

package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kohakuriver/kohakuriver/agent/internal/testexec"
)

const (
	childEnv        = "KOHAKURIVER_NETNS_TEST_CHILD"
	unprivilegedEnv = "KOHAKURIVER_NETNS_TEST_UNPRIVILEGED"
	greeting        = "hello from the other namespace"
)

// TestMain doubles as the child: a listener in a network namespace of its
// own (see startChild).
func TestMain(m *testing.M) {
	if ns := os.Getenv(unprivilegedEnv); ns != "" {
		// As an unprivileged user: report how Dial fails.
		_, err := Dial(context.Background(), &net.Dialer{}, ns, "tcp", "127.0.0.1:22")
		fmt.Printf("permission=%v err=%v\n", errors.Is(err, ErrPermission), err)
		os.Exit(0)
	}
	if os.Getenv(childEnv) == "1" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild brings up the loopback of its fresh namespace (a new namespace
// starts with lo down), listens on 127.0.0.1, prints the port, and greets
// every connection until its stdin closes.
func runChild() error {
	if err := loopbackUp(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, greeting+"\n")
			c.Close()
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// startChild runs the test binary as a child in a new network namespace and
// returns its namespace path and the port it listens on there.
func startChild(t *testing.T) (nsPath string, port string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("KOHAKURIVER_REQUIRE_DOCKER") == "1" {
			t.Fatal("network namespace tests need root (KOHAKURIVER_REQUIRE_DOCKER=1 is set, so this fails instead of skipping)")
		}
		t.Skip("network namespace tests need root")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child did not report its port: %v", err)
	}
	return fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), strings.TrimSpace(line)
}

func readGreeting(c net.Conn) (string, error) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestDialReachesTheOtherNamespacesLoopback(t *testing.T) {
	nsPath, port := startChild(t)
	addr := net.JoinHostPort("127.0.0.1", port)

	// From here the port is not the child's: nothing, or someone else.
	if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
		if got, _ := readGreeting(c); got == greeting {
			t.Fatal("the child's listener answered in the test's own namespace: the child has no namespace of its own")
		}
	}

	c, err := Dial(context.Background(), &net.Dialer{}, nsPath, "tcp", addr)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if got, err := readGreeting(c); err != nil || got != greeting {
		t.Fatalf("through Dial: %q, %v; want %q", got, err, greeting)
	}
}

// TestDialLeavesEveryThreadHome dials many times at once and then checks
// that every thread of the process is in the process's namespace: a thread
// left in the other one would make later sockets of unrelated code land
// there.
func TestDialLeavesEveryThreadHome(t *testing.T) {
	nsPath, port := startChild(t)
	addr := net.JoinHostPort("127.0.0.1", port)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			c, err := Dial(context.Background(), &net.Dialer{}, nsPath, "tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			if got, err := readGreeting(c); err != nil || got != greeting {
				errs <- fmt.Errorf("got %q, %v", got, err)
			}
		})
	}
	// A cancelled dial and one to a closed port take the error paths.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Dial(ctx, &net.Dialer{}, nsPath, "tcp", addr); err == nil {
		t.Error("Dial with a cancelled context succeeded")
	}
	if _, err := Dial(context.Background(), &net.Dialer{}, nsPath, "tcp", "127.0.0.1:1"); err == nil {
		t.Error("Dial to a closed port in the other namespace succeeded")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net")
		if err != nil {
			continue // the thread ended meanwhile
		}
		if ns != own {
			t.Errorf("thread %s is in %s, not the process's %s", task.Name(), ns, own)
		}
	}
	// And a plain socket made now is in the process's namespace.
	if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
		if got, _ := readGreeting(c); got == greeting {
			t.Fatal("a plain dial after the netns dials reached the child's namespace")
		}
	}
}

func TestDialRefusals(t *testing.T) {
	if _, err := Dial(context.Background(), &net.Dialer{}, "/proc/self/ns/net", "tcp", "127.0.0.1:22"); !errors.Is(err, ErrSameNamespace) {
		t.Errorf("own namespace: %v; want ErrSameNamespace", err)
	}
	_, err := Dial(context.Background(), &net.Dialer{}, "/nonexistent/ns/net", "tcp", "127.0.0.1:22")
	if err == nil || errors.Is(err, ErrPermission) || errors.Is(err, ErrSameNamespace) {
		t.Errorf("missing namespace file: %v; want a plain open error", err)
	}
	// Not a namespace at all: setns refuses it.
	f := t.TempDir() + "/plain"
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(context.Background(), &net.Dialer{}, f, "tcp", "127.0.0.1:22"); err == nil || errors.Is(err, ErrPermission) {
		t.Errorf("a regular file as the namespace: %v; want setns's refusal", err)
	}
	// Names are not looked up in there (see ErrNotLiteral).
	for _, addr := range []string{"localhost:22", "sshd:22", "127.0.0.1", ""} {
		if _, err := Dial(context.Background(), &net.Dialer{}, "/nonexistent", "tcp", addr); !errors.Is(err, ErrNotLiteral) {
			t.Errorf("address %q: %v; want ErrNotLiteral", addr, err)
		}
	}
	for _, e := range []error{unix.EPERM, unix.EACCES} {
		if !errors.Is(classify(e), ErrPermission) || !errors.Is(classify(e), e) {
			t.Errorf("classify(%v) = %v; want ErrPermission wrapping it", e, classify(e))
		}
	}
	if errors.Is(classify(unix.ENOENT), ErrPermission) {
		t.Error("classify(ENOENT) is ErrPermission")
	}
}

// TestDialWithoutPrivileges runs Dial as nobody against another namespace:
// the kernel's refusal must come out as ErrPermission, which makes the relay
// stop trying and say so once.
func TestDialWithoutPrivileges(t *testing.T) {
	nsPath, _ := startChild(t)
	// nobody must be able to execute a copy of this binary.
	dir, err := os.MkdirTemp("", "kr-netns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	copyPath := testexec.CopyForOthers(t, dir)
	for _, ns := range []string{nsPath, "/proc/1/ns/net"} {
		cmd := exec.Command(copyPath, "-test.run=^$")
		cmd.Env = append(os.Environ(), unprivilegedEnv+"="+ns)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "permission=true ") {
			t.Errorf("Dial into %s as nobody: %q, %v; want ErrPermission", ns, out, err)
		}
	}
}
