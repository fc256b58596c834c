package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/kohakuriver/kohakuriver/store"
)

// Error is a refusal by the host API, as Client and AgentAPI return it.
// Message is meant for the user: it says what to do.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string {
	return e.Message + " (HTTP " + strconv.Itoa(e.Status) + ")"
}

// StatusOf returns the HTTP status of an *Error in err's chain, or 0.
func StatusOf(err error) int {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Status
	}
	return 0
}

// Sentinel errors of the exec stream, returned (wrapped) by Client.Exec and
// ReadExecFrames. Match them with errors.Is.
var (
	// ErrExecFailed: the command could not run to completion (the node
	// failed or the VPS went away mid-stream); the message says why.
	ErrExecFailed = errors.New("exec failed")
	// ErrExecIncomplete: the stream ended without a final frame (the
	// connection to the host broke).
	ErrExecIncomplete = errors.New("exec stream ended without an exit code")
)

// httpError is an error answer: status and the message the API user sees.
// err, when set, is the internal cause, logged but never sent.
type httpError struct {
	status int
	msg    string
	err    error
}

func (e *httpError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

func (e *httpError) Unwrap() error { return e.err }

// errorf returns an httpError with a formatted user message.
func errorf(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

// nodeError turns a NodeAgent failure into 504 (the node did not answer in
// time) or 502 (it failed). Its message names the node and the operation;
// hint, when set, is appended and says what to do.
func nodeError(node, what string, err error, hint string) *httpError {
	status, reason := http.StatusBadGateway, err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		status, reason = http.StatusGatewayTimeout, "the node did not answer in time"
	}
	msg := fmt.Sprintf("node %s could not %s: %s", node, what, reason)
	if hint != "" {
		msg += "; " + hint
	}
	return &httpError{status: status, msg: msg, err: err}
}

// invalid answers 400 with a store validation error's message, without
// the sentinel's "invalid value: " prefix.
func invalid(err error, prefix string) error {
	msg := strings.TrimPrefix(err.Error(), store.ErrInvalid.Error()+": ")
	if prefix != "" {
		msg = prefix + ": " + msg
	}
	return &httpError{status: http.StatusBadRequest, msg: msg}
}

// classify maps err to the status and message sent to the client. Store
// sentinels that only arise from user input have user-facing messages;
// anything else is a 500 whose detail stays in the log.
func classify(err error, reqID string) (status int, msg string) {
	if he, ok := errors.AsType[*httpError](err); ok {
		return he.status, he.msg
	}
	switch {
	case errors.Is(err, store.ErrInvalid):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, store.ErrNameTaken):
		return http.StatusConflict, "that VPS name is taken; choose another name or leave it empty"
	case errors.Is(err, store.ErrExists):
		return http.StatusConflict, "a record with that name already exists"
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound, "not found"
	case errors.Is(err, store.ErrNoFreePort):
		return http.StatusServiceUnavailable, "every SSH port of the host's range is in use; delete VPSs you no longer need or ask the operator to widen the port range"
	case errors.Is(err, store.ErrClosed):
		return http.StatusServiceUnavailable, "the host is shutting down; retry in a moment"
	}
	return http.StatusInternalServerError, "internal error; the host log has the details under request id " + reqID
}
