package clusterauth

import "errors"

// Errors returned (wrapped, with detail) by Verifier.Verify. Match them with
// errors.Is. Their messages never contain the token and are safe to send back
// to the peer.
var (
	// ErrMissing: the request has no Authorization header, or one with a
	// different scheme.
	ErrMissing = errors.New("missing cluster authorization")
	// ErrMalformed: the Authorization header has our scheme but cannot be
	// parsed (missing, repeated or badly formatted ts, nonce or sig).
	ErrMalformed = errors.New("malformed cluster authorization")
	// ErrBadSignature: the signature does not match: a different token, or
	// the method, path, query, body, ts or nonce were changed.
	ErrBadSignature = errors.New("bad signature")
	// ErrExpired: ts is more than the window away from the verifier's
	// clock (an old capture, or clock skew between host and node).
	ErrExpired = errors.New("request expired")
	// ErrReplayed: a valid request with this nonce was already accepted.
	ErrReplayed = errors.New("request replayed")
	// ErrNonceCacheFull: the nonce cache holds its maximum of unexpired
	// entries; the request may be retried when older ones expire.
	ErrNonceCacheFull = errors.New("too many requests in the replay window")
)
