package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/kohakuriver/kohakuriver/gateway/api"
)

// TerminalCmd groups the commands that work through the host API instead
// of SSH.
type TerminalCmd struct {
	Exec TerminalExecCmd `cmd:"" help:"Run a command in a VPS; its stdout, stderr and exit status are passed on."`
}

// TerminalExecCmd runs one command in a VPS through the host API.
type TerminalExecCmd struct {
	Ref     string   `arg:"" name:"task_id" help:"Task id or name of the VPS."`
	NoStdin bool     `short:"n" name:"no-stdin" help:"Send no stdin (by default stdin is sent when it is not a terminal)."`
	Cmd     []string `arg:"" passthrough:"" name:"command" help:"The program and its arguments, after --."`
}

// Help is the detailed help.
func (TerminalExecCmd) Help() string {
	return fmt.Sprintf(`The command runs without a terminal. Stdin, when it is not a terminal, is read whole
(at most %d KiB) and sent first; use scp for files. The exit status is the command's.

Examples:
  kohakuriver terminal exec web -- cat /root/.ssh/authorized_keys
  kohakuriver terminal exec web -- sh -c 'apt-get update && apt-get install -y git'
  echo hello | kohakuriver terminal exec web -- tee /tmp/hello`, api.MaxExecStdin>>10)
}

// Run runs the command.
func (c *TerminalExecCmd) Run(ctx context.Context, env *Env, cl *Cluster) error {
	cmd := stripDashes(c.Cmd)
	if len(cmd) == 0 {
		return errors.New("no command given: write it after --, e.g. kohakuriver terminal exec " + c.Ref + " -- uname -a")
	}
	var stdin io.Reader
	if !c.NoStdin && !env.StdinTerminal {
		stdin = env.Stdin
	}
	code, err := cl.API.Exec(ctx, c.Ref, cmd, stdin, env.Stdout, env.Stderr)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("exec in VPS %s: %w", c.Ref, err)
	}
	if code != 0 {
		return exitError{code: code}
	}
	return nil
}
