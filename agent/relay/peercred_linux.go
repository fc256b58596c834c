package relay

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerCheckListener accepts only peers running as the agent's user or as
// root (SO_PEERCRED), and returns the *net.UnixConn itself: the Handler
// needs it to pass descriptors.
type peerCheckListener struct {
	*net.UnixListener
	uid int
}

func (l *peerCheckListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		if uid, err := peerUID(c); err == nil && (uid == l.uid || uid == 0) {
			return c, nil
		}
		c.Close() // someone else's process: not a word
	}
}

func peerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	uid := -1
	var cerr error
	err = raw.Control(func(fd uintptr) {
		var cred *unix.Ucred
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if cerr == nil {
			uid = int(cred.Uid)
		}
	})
	if err == nil {
		err = cerr
	}
	return uid, err
}

// checkPrivateDir requires dir to be a directory (not a link to one) owned
// by this process's user and closed to group and others.
func checkPrivateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("relay socket directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("relay socket directory %s is not a directory", dir)
	case !ok || int(st.Uid) != os.Geteuid():
		return fmt.Errorf("relay socket directory %s belongs to another user: choose a directory of the agent's user", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("relay socket directory %s is open to other users (mode %04o): chmod 700 it or choose another", dir, fi.Mode().Perm())
	}
	return nil
}
