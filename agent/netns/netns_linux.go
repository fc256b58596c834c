package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Dial dials address on network from inside the network namespace at
// nsPath (a /proc/PID/ns/net or a bind mount of one, such as a Docker
// sandbox key), with d's settings and ctx's deadline. The target must not
// be the caller's own namespace (ErrSameNamespace), and address must be an
// IP literal with a port (ErrNotLiteral): then the dial is one socket made
// on the calling thread, and no name is looked up.
func Dial(ctx context.Context, d *net.Dialer, nsPath, network, address string) (net.Conn, error) {
	if _, err := netip.ParseAddrPort(address); err != nil {
		return nil, fmt.Errorf("%w: %q", ErrNotLiteral, address)
	}
	// O_NONBLOCK: a path that is a FIFO must not hang the dial.
	target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("netns: open %s: %w", nsPath, classify(err))
	}
	defer unix.Close(target)
	if err := checkOther(target); err != nil {
		return nil, err
	}

	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := dialOnThread(ctx, d, target, network, address)
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// dialOnThread runs on a goroutine of its own, which it locks to its
// thread and leaves locked unless the thread is back in its own namespace.
func dialOnThread(ctx context.Context, d *net.Dialer, target int, network, address string) (net.Conn, error) {
	runtime.LockOSThread()
	// The thread's own namespace, to go back to. Per thread, not per
	// process: only this thread moves.
	home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("netns: open this thread's namespace: %w", classify(err))
	}
	defer unix.Close(home)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread() // setns failed: the thread did not move
		return nil, fmt.Errorf("netns: enter: %w", classify(err))
	}
	c, dialErr := d.DialContext(ctx, network, address)
	if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
		// Stay locked: the thread dies with this goroutine (or, if it is
		// the main thread, which the runtime never ends, it is parked for
		// good; tools reading /proc/PID/ns/net would then see the other
		// namespace, but no Go code runs there again).
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("netns: return to the agent's namespace: %w", err)
	}
	runtime.UnlockOSThread()
	if dialErr != nil {
		return nil, dialErr
	}
	return c, nil
}

// ownNamespace is the process's network namespace, read once, before any
// Dial moves a thread: /proc/self/ns/net is the main thread's, and a Dial
// may have moved exactly that thread for a moment.
var ownNamespace = sync.OnceValues(func() (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Stat("/proc/self/ns/net", &st)
	return st, err
})

// checkOther refuses the caller's own namespace: same device and inode as
// the process's.
func checkOther(target int) error {
	own, err := ownNamespace()
	if err != nil {
		return fmt.Errorf("netns: %w", classify(err))
	}
	var st unix.Stat_t
	if err := unix.Fstat(target, &st); err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	if st.Dev == own.Dev && st.Ino == own.Ino {
		return ErrSameNamespace
	}
	return nil
}

func classify(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %w", ErrPermission, err)
	}
	return err
}
