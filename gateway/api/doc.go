// Package api is the host's HTTP API (served on :8000) and its Go clients:
// Client for the CLI, AgentAPI for node agents. It uses only net/http,
// encoding/json and log/slog; the state lives in a store.Store and the
// nodes are reached through the NodeAgent interface declared here.
//
// # Basics
//
// Every /api/v1 request carries "Authorization: Bearer <token>". A token
// belongs to a store.User, found by the hex SHA-256 of the token (the token
// is never stored or logged). EnsureAdmin creates the first user, "admin",
// and writes its token to a 0600 file. Admins may do everything; other
// users see and act on their own VPSs only, and another user's VPS is
// answered 404, exactly like a missing one, so its existence does not leak.
// User management is admin-only (403). The agent endpoints
// (/api/v1/agent/register and /heartbeat) take no bearer token: they are
// signed with the cluster token (agent/clusterauth).
//
// Bodies are JSON, at most MaxBodySize; user requests refuse unknown fields.
// Every error answer is {"error": "..."} with a message that says what to
// do: 400 bad input, 401 no or bad token, 403 admin-only, 404, 409 name
// taken or wrong state, 413 body too large, 502 the node failed, 504 the
// node did not answer in time, 503 no online node (or the VPS's node is
// offline). A 500's message carries the request id (also in the
// X-Request-Id header) under which the host logged the cause.
//
// # VPS lifecycle
//
//	create:  (record) pending -> running | failed
//	start:   stopped|failed -> pending -> running | failed
//	restart: running|stopped|failed -> pending -> running | failed
//	stop:    running|failed -> stopped
//	node silent > HeartbeatTimeout: running|pending|stopped -> lost
//	node reports again: lost -> running (reported running) | stopped
//
// A failed create keeps the record (status failed, Message = the node's
// error) so the user sees why; DELETE removes it. Host keys are pinned from
// the node's answer to create; a later start that shows other keys keeps the
// pinned ones and says so in Message, and the gateway refuses the hop.
//
// Keys are changed in the store first, then pushed to the node if the VPS
// runs. The gateway reads keys from the store at every login, so a removal
// takes effect at once even when the node is slow or down.
//
// Exec answers NDJSON frames (ExecFrame), flushed one by one; see
// ExecFrame and ReadExecFrames.
//
// # Caveats
//
//   - Calls to a node run with a context detached from the request and
//     bounded by the host (3 min create, 2 min others): the record must
//     reach a final state even if the API client goes away. Exec is the
//     exception; it ends with its request.
//   - While a start or restart runs the VPS is pending and a second one is
//     refused (409). A host crash in that window leaves it pending until
//     the node reports it running, or until it is deleted.
//   - Keys changed while a VPS is stopped reach the container at its next
//     start; keys changed while its node is offline are pushed at the next
//     start or key change.
//   - http.Server timeouts: use NewHTTPServer; a WriteTimeout would cut
//     long creates and exec streams.
package api
