// Package control is the host->agent control API: the host asks a node's
// agent to create, start, stop, restart and delete VPS containers, rewrite
// their authorized_keys and run commands in them. Every request is signed
// with the cluster token (package clusterauth); the agent refuses anything
// unsigned, stale or replayed.
//
// The server side (Handler) wraps a Runtime, normally the node's Docker
// runtime. The client side (Client) implements api.NodeAgent for the host.
//
// Exec output streams back as newline-delimited JSON frames (api.ExecFrame),
// so stdout and stderr stay apart and the exit code arrives last.
package control
