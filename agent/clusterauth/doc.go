// Package clusterauth authenticates HTTP requests between the host (gateway,
// API) and the node agents with the shared cluster token.
//
// # Basics
//
// The sender calls Sign (or uses Transport) to add
//
//	Authorization: KR-HMAC-SHA256 ts=<unix seconds>,nonce=<32 hex>,sig=<64 hex>
//
// where sig is HMAC-SHA256, keyed with the cluster token, over
//
//	METHOD "\n" REQUEST-URI "\n" ts "\n" nonce "\n" hex(SHA-256(body))
//
// REQUEST-URI is the path and raw query exactly as sent on the request line
// (url.URL.RequestURI). The receiver holds a Verifier and calls Verify, or
// wraps its handler in Middleware, which also bounds and restores the body.
//
// # Why an HMAC instead of sending the token
//
// The host<->agent links carry no TLS (see below), so a token sent as a
// bearer credential could be read by anyone on the cluster network and reused
// forever, against every agent. A signature proves possession of the token
// without revealing it, and it binds the method, the path and query, and the
// body, so a captured request cannot be altered to do something else.
//
// # Why no TLS
//
// The bulk of this traffic is the SSH relay (package agent/relay), whose
// payload is an SSH connection: end-to-end encrypted and integrity-protected
// between the gateway and the VPS's sshd, whose host key the gateway pins. A
// TLS layer would encrypt it a second time for nothing. What the relay needs
// from this package is only that nobody without the token can open one.
// Control API bodies are not secret; if one ever is, encrypt that field or
// put that API behind TLS.
//
// # The replay window
//
// A request is accepted only if its ts is within ±Window (default 60s) of the
// verifier's clock and its nonce has not been accepted before. Nonces are
// remembered until their request would be refused as expired anyway, so the
// cache only has to cover one window: at most MaxNonces entries (default
// 100000, a few MB). When it is full, Verify refuses (ErrNonceCacheFull)
// instead of growing or forgetting, because forgetting a nonce early would
// reopen the replay. Nonces are recorded only after the signature checks
// out, so nobody without the token can fill the cache.
//
// # Caveats
//
//   - Clocks of the host and the nodes must agree within the window (run NTP).
//     ErrExpired's message says how far off the timestamp was.
//   - The signature does not name the receiving agent: every agent shares
//     the token, and each keeps its own nonce cache, so a request captured on
//     its way to one agent can be replayed to a different agent within the
//     window. Requests that name a task are harmless there (the other agent
//     does not run that VPS), except a create, which therefore carries the
//     node's name in its body (api.VPSSpec.Node) and is refused by any other
//     agent; requests that do not name a task should be idempotent or carry
//     the agent's name in the path or body too.
//   - Headers other than Authorization are not signed. Do not base
//     authorization decisions on them.
//   - Nothing in this package logs or formats the token; callers must not
//     either.
package clusterauth
