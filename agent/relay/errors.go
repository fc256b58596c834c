package relay

import "errors"

// Sentinel errors. Targets implementations return the first two (wrapped);
// Dialer.Dial returns all of them, wrapped with the agent's one-line
// explanation, so the gateway can branch with errors.Is and show the message.
var (
	// ErrUnknownVPS: the agent does not run that VPS (HTTP 404).
	ErrUnknownVPS = errors.New("vps not on this node")
	// ErrNotRunning: the agent has the VPS but it is stopped (HTTP 409).
	ErrNotRunning = errors.New("vps not running")
	// ErrUnauthorized: the agent refused the request's signature: a
	// different cluster token, or host and node clocks too far apart (401).
	ErrUnauthorized = errors.New("node agent refused authentication")
	// ErrUnreachable: the agent is up but could not open the relay: the
	// VPS's sshd did not accept the connection (502), or the agent is at
	// its relay limit or shutting down (503).
	ErrUnreachable = errors.New("vps unreachable")
	// ErrAgentUnreachable: no relay handshake with the agent: the TCP dial
	// failed, the handshake timed out, or the peer is not a relay agent.
	ErrAgentUnreachable = errors.New("node agent not reachable")
	// ErrBadRequest: the agent found the request malformed (400, 405, 426),
	// or Dial was given a task id that is not 19 digits.
	ErrBadRequest = errors.New("bad relay request")
	// ErrRefused: any other refusal by the agent (for example 500 when it
	// could not look the VPS up).
	ErrRefused = errors.New("relay refused by node agent")
)
