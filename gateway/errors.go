package gateway

import (
	"errors"
	"fmt"
)

// Sentinel errors a Hop returns (wrapped) so the gateway can tell the user
// precisely what failed without leaking internal addresses.
var (
	// ErrNodeUnreachable: the node's agent could not be reached.
	ErrNodeUnreachable = errors.New("node unreachable")
	// ErrVPSNotRunning: the agent says the VPS's container is not running.
	ErrVPSNotRunning = errors.New("vps not running")
	// ErrSSHDUnreachable: the agent runs the VPS but its sshd does not answer.
	ErrSSHDUnreachable = errors.New("vps sshd unreachable")
	// ErrHostKeyMismatch: the VPS's sshd showed a host key other than the
	// pinned one.
	ErrHostKeyMismatch = errors.New("vps host key mismatch")
)

// userError is an error with a message meant for the SSH user. The wrapped
// error is for the operator's log only.
type userError struct {
	msg string
	err error
}

func (e *userError) Error() string {
	if e.err == nil {
		return e.msg
	}
	return e.msg + ": " + e.err.Error()
}

func (e *userError) Unwrap() error { return e.err }

func userErrorf(err error, format string, args ...any) error {
	return &userError{msg: fmt.Sprintf(format, args...), err: err}
}

// userMessage returns what the SSH user may see for err, tagged with the
// conn id so an operator can find the log line.
func userMessage(err error, connID string) string {
	var ue *userError
	if errors.As(err, &ue) {
		return fmt.Sprintf("kohakuriver: %s (conn %s)", ue.msg, connID)
	}
	return fmt.Sprintf("kohakuriver: internal error (conn %s); ask your administrator", connID)
}
