package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/kohakuriver/kohakuriver/agent"
	"github.com/kohakuriver/kohakuriver/agent/docker"
)

// The agent runs in a child process (this binary, re-executed with
// agentChildArg), as it does on a real node: the relay's splice(2) work and
// the agent's memory then stay out of the figures this process reports for
// the host and gateway.
const agentChildArg = "-agent-child"

const (
	envAgentNode    = "KOHAKURIVER_BENCH_AGENT_NODE"
	envAgentHostURL = "KOHAKURIVER_BENCH_AGENT_HOST_URL"
	envAgentToken   = "KOHAKURIVER_BENCH_AGENT_TOKEN"
	envAgentVerbose = "KOHAKURIVER_BENCH_AGENT_VERBOSE"
	envAgentSocket  = "KOHAKURIVER_BENCH_AGENT_RELAY_SOCKET"
)

// agentProc is the running child.
type agentProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan error
}

// startAgentProc starts the agent child, with a handoff socket at
// relaySocket unless that is empty; it stops when its stdin closes.
func startAgentProc(node, hostURL, token, relaySocket string, verbose bool) (*agentProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, agentChildArg)
	cmd.Env = append(os.Environ(), envAgentNode+"="+node, envAgentHostURL+"="+hostURL, envAgentToken+"="+token, envAgentSocket+"="+relaySocket)
	if verbose {
		cmd.Env = append(cmd.Env, envAgentVerbose+"=1")
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &agentProc{cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

// pid is the child's process ID, for its /proc figures.
func (p *agentProc) pid() int { return p.cmd.Process.Pid }

// stop closes the child's stdin and waits; it kills the child if it has not
// exited after 20 s.
func (p *agentProc) stop() {
	_ = p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// agentChild is the child's main: a node agent with the Docker runtime.
func agentChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "agent child:", err)
		return 1
	}
	node, hostURL, token := os.Getenv(envAgentNode), os.Getenv(envAgentHostURL), os.Getenv(envAgentToken)
	if node == "" || hostURL == "" || token == "" {
		return fail(errors.New("bad environment (run through the bench, not by hand)"))
	}
	if _, err := raiseNoFile(65536); err != nil {
		return fail(err)
	}
	log := slog.New(slog.DiscardHandler)
	if os.Getenv(envAgentVerbose) == "1" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("side", "agent")
	}
	rt, err := docker.New(docker.Options{NodeName: node, Logger: log})
	if err != nil {
		return fail(err)
	}
	defer rt.Close()
	a, err := agent.New(agent.Config{
		Name: node, ListenAddr: "127.0.0.1:0", HostURL: hostURL,
		ClusterToken: token, Runtime: rt, Logger: log, HeartbeatInterval: 2 * time.Second,
		RelaySocket: os.Getenv(envAgentSocket),
	})
	if err != nil {
		return fail(err)
	}
	if err := a.Listen(); err != nil {
		return fail(err)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	// The parent closes stdin to stop the agent, and so does its death.
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fail(err)
	}
	return 0
}
