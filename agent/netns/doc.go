// Package netns dials from inside another network namespace: the agent uses
// it to reach a VPS's sshd on the container's own loopback.
//
// Why: a connection from the node to a container's address crosses the
// Docker bridge, a veth pair and connection tracking in both namespaces;
// one to 127.0.0.1 inside the container's namespace is plain loopback. The
// sshd side of every session's bytes is the relay's busiest socket (or,
// handed off, the gateway's), and on the bench machine loopback cost its
// sender about a quarter less CPU per GiB than the bridge (0.37-0.44
// against 0.49-0.58 core-s, 32 KiB writes), and its receiver about a tenth.
//
// How: a socket belongs to the network namespace of the thread that created
// it, for good. Dial locks a fresh goroutine to its OS thread, moves that
// thread into the target namespace (setns), dials, and moves it back; the
// connection then works from any goroutine. If the thread cannot be moved
// back it is never unlocked, so the runtime ends it with the goroutine
// (parks it, if it is the main thread) instead of reusing it for other code. New runtime threads are not cloned
// from a locked thread (the runtime uses a template thread for that), so
// none inherits the namespace.
//
// Entering a namespace needs CAP_SYS_ADMIN (the agent runs as root on a
// node); without it Dial fails with an error that errors.Is reports as
// ErrPermission, and callers dial the container's address instead.
package netns
