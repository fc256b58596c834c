//go:build !linux

package relay

import (
	"errors"
	"net"
)

// peerCheckListener is Linux-only (SO_PEERCRED); elsewhere ListenLocal
// refuses at checkPrivateDir and the gateway relays over TCP.
type peerCheckListener struct {
	*net.UnixListener
	uid int
}

func checkPrivateDir(string) error {
	return errors.New("relay handoff sockets are supported on Linux only")
}

func peerUID(*net.UnixConn) (int, error) {
	return -1, errors.New("relay handoff sockets are supported on Linux only")
}
