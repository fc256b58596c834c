package relay

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// HandoffProtocol is the Upgrade token of a handoff: the agent answers with
// the connected socket to the sshd itself, passed over its local unix
// socket (SCM_RIGHTS), instead of relaying bytes. See doc.go, "Handoff".
const HandoffProtocol = "kohakuriver-relay-handoff/1"

// MaxSocketPath is the longest unix socket path Linux accepts (sun_path
// holds 108 bytes with the terminating NUL).
const MaxSocketPath = 107

// maxPassedFDs is how many descriptors one read of a handoff answer takes
// in; a well-behaved agent sends exactly one, and any more are closed.
const maxPassedFDs = 4

var handedOff = []byte("HTTP/1.1 101 Switching Protocols\r\n" +
	"Connection: Upgrade\r\n" +
	"Upgrade: " + HandoffProtocol + "\r\n\r\n")

// onLocalSocket reports whether r came in on a unix socket listener.
func onLocalSocket(r *http.Request) bool {
	addr, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return addr != nil && addr.Network() == "unix"
}

// handOff passes target's descriptor to the peer of client with the 101
// answer, after any bytes the peer sent behind its request. The caller
// closes both afterwards: the peer holds its own copy of the socket.
func (h *Handler) handOff(client, target net.Conn, br bufferedReader) error {
	uc, ok := client.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("handoff over a %T, not a unix socket", client)
	}
	sc, ok := target.(syscall.Conn)
	if !ok {
		return fmt.Errorf("target %T has no descriptor to pass", target)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(h.handshakeTimeout)
	if err := forwardEarly(target, br, deadline); err != nil {
		return err
	}
	uc.SetWriteDeadline(deadline)
	var n int
	var werr error
	// The descriptor is only valid inside Control; sendmsg copies it into
	// the peer's queue there.
	err = raw.Control(func(fd uintptr) {
		n, _, werr = uc.WriteMsgUnix(handedOff, syscall.UnixRights(int(fd)), nil)
	})
	switch {
	case err != nil:
		return err
	case werr != nil:
		return fmt.Errorf("pass the socket: %w", werr)
	case n != len(handedOff):
		return fmt.Errorf("pass the socket: short write (%d of %d bytes)", n, len(handedOff))
	}
	return nil
}

// rightsReader reads a unix socket and keeps every descriptor passed along
// with the bytes. A plain Read would make the kernel close them.
type rightsReader struct {
	c         *net.UnixConn
	fds       []int
	truncated bool // the kernel dropped descriptors that did not fit
	oob       []byte
}

func (r *rightsReader) Read(p []byte) (int, error) {
	if r.oob == nil {
		r.oob = make([]byte, syscall.CmsgSpace(maxPassedFDs*4))
	}
	n, oobn, flags, _, err := r.c.ReadMsgUnix(p, r.oob)
	// A failed read (a deadline, a reset) reports -1; io.Reader callers
	// such as bufio panic on a negative count.
	n, oobn = max(n, 0), max(oobn, 0)
	if flags&syscall.MSG_CTRUNC != 0 {
		r.truncated = true
	}
	if oobn > 0 {
		msgs, perr := syscall.ParseSocketControlMessage(r.oob[:oobn])
		if perr != nil {
			r.truncated = true
		}
		for i := range msgs {
			fds, ferr := syscall.ParseUnixRights(&msgs[i])
			if ferr == nil {
				r.fds = append(r.fds, fds...)
			}
		}
	}
	return n, err
}

// closeAll closes every descriptor received and not taken.
func (r *rightsReader) closeAll() {
	for _, fd := range r.fds {
		syscall.Close(fd)
	}
	r.fds = nil
}

// takeConn turns the one descriptor of a handoff answer into a connection;
// every descriptor received is closed or owned by the result.
func (r *rightsReader) takeConn() (net.Conn, error) {
	defer r.closeAll()
	if r.truncated || len(r.fds) != 1 {
		return nil, fmt.Errorf("%w: handoff answer carried %d sockets, want exactly 1", ErrAgentUnreachable, len(r.fds))
	}
	f := os.NewFile(uintptr(r.fds[0]), "relay-handoff")
	r.fds = nil
	defer f.Close() // FileConn holds a duplicate
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("%w: handed-off socket: %w", ErrAgentUnreachable, err)
	}
	if _, ok := nc.(*net.TCPConn); !ok {
		nc.Close()
		return nil, fmt.Errorf("%w: handed-off socket is a %s socket, not TCP", ErrAgentUnreachable, nc.LocalAddr().Network())
	}
	return nc, nil
}

// ListenLocal listens for handoffs on the unix socket at path, for a
// Handler's http.Server of its own (the agent serves only the relay there).
//
// The socket is the agent's to give away sockets into its VPSs, so who may
// connect is checked three ways: the socket is mode 0600 inside a directory
// that must be the agent user's and closed to everyone else (it is created
// 0700 when missing; only that last directory is checked, so its parents
// must not be writable by others either: the defaults are /run, the user's
// runtime directory or a per-user directory in /tmp), the listener drops a
// peer whose uid is neither the agent's nor root's (SO_PEERCRED), and every
// request is signed with the cluster token like any relay request. The
// dialling side checks the listener's uid the same way (DialLocal).
//
// A stale socket file left by an agent that died is replaced; a socket on
// which another process still answers is an error. Closing the listener
// removes the file.
func ListenLocal(path string) (net.Listener, error) {
	if err := CheckSocketPath(path); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("relay socket directory: %w", err)
	}
	if err := checkPrivateDir(dir); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("relay socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("relay socket: %w", err)
	}
	return &peerCheckListener{UnixListener: ln.(*net.UnixListener), uid: os.Geteuid()}, nil
}

// CheckSocketPath reports whether path can name a handoff socket: absolute,
// at most MaxSocketPath bytes, no NUL. The host checks what agents report.
func CheckSocketPath(path string) error {
	switch {
	case !filepath.IsAbs(path):
		return fmt.Errorf("relay socket path %q is not absolute", path)
	case len(path) > MaxSocketPath:
		return fmt.Errorf("relay socket path %q is %d bytes long; unix sockets allow %d: choose a shorter path", path, len(path), MaxSocketPath)
	case strings.ContainsRune(path, 0):
		return fmt.Errorf("relay socket path %q holds a NUL byte", path)
	}
	return nil
}

// removeStaleSocket removes a socket file nobody answers on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("relay socket: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("relay socket path %s exists and is not a socket: remove it or choose another path", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("relay socket %s is served by another process (another agent on this machine?): give each agent its own path", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale relay socket: %w", err)
	}
	return nil
}

// bufferedReader is the part of bufio.Reader that forwardEarly needs.
type bufferedReader interface {
	Buffered() int
	Peek(int) ([]byte, error)
}

// forwardEarly writes to target the bytes the client sent behind its
// request: net/http read them ahead into br.
func forwardEarly(target net.Conn, br bufferedReader, deadline time.Time) error {
	n := br.Buffered()
	if n == 0 {
		return nil
	}
	early, _ := br.Peek(n) // cannot fail: n bytes are buffered
	target.SetWriteDeadline(deadline)
	if _, err := target.Write(early); err != nil {
		return fmt.Errorf("forward early bytes: %w", err)
	}
	target.SetWriteDeadline(time.Time{})
	return nil
}

// BootID identifies the running kernel (Linux's random boot id), or is ""
// when unknown. An agent reports it with its handoff socket so that the
// host tries the socket only when both run on one machine: a path of the
// same name on another machine means nothing here.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(b))
}
