package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
)

// Exec runs cmd as root in the task's running container, without a TTY,
// and returns its exit code. stdout and stderr receive the command's output
// separately (nil discards); stdin, if not nil, is copied to the command
// and then closed.
//
// Exec returns when the command's output ends. A goroutine still blocked
// reading stdin at that point ends after its next Read returns; pass a
// stdin that reaches EOF or is closed by the caller (as with os/exec).
// Cancelling ctx closes the streams; the command itself may keep running.
//
// The error wraps ErrNotFound or ErrNotRunning when the container is
// missing or stopped; a command that ran and failed is not an error.
func (rt *Runtime) Exec(ctx context.Context, taskID string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if len(cmd) == 0 {
		return -1, errors.New("exec: empty command")
	}
	c, err := rt.inspect(ctx, taskID)
	if err != nil {
		return -1, err
	}
	if c.State == nil || !c.State.Running {
		return -1, fmt.Errorf("exec in task %s: %w", taskID, ErrNotRunning)
	}
	created, err := rt.cli.ExecCreate(ctx, c.ID, client.ExecCreateOptions{
		Cmd:          cmd,
		AttachStdin:  stdin != nil,
		AttachStdout: true,
		AttachStderr: true,
	})
	if err != nil {
		if cerrdefs.IsConflict(err) {
			return -1, fmt.Errorf("exec in task %s: %w", taskID, ErrNotRunning)
		}
		return -1, fmt.Errorf("exec create: %w", err)
	}
	att, err := rt.cli.ExecAttach(ctx, created.ID, client.ExecAttachOptions{})
	if err != nil {
		return -1, fmt.Errorf("exec attach: %w", err)
	}
	defer att.Close()
	// The hijacked connection does not watch ctx once established.
	stopWatch := context.AfterFunc(ctx, att.Close)
	defer stopWatch()

	if stdin != nil {
		go func() {
			// Errors end the copy; the command then sees EOF on stdin.
			_, _ = io.Copy(att.Conn, stdin)
			_ = att.CloseWrite()
		}()
	}
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	// Without a TTY the stream multiplexes stdout and stderr in frames.
	if _, err := stdcopy.StdCopy(stdout, stderr, att.Reader); err != nil {
		if ctx.Err() != nil {
			return -1, fmt.Errorf("exec: %w", context.Cause(ctx))
		}
		return -1, fmt.Errorf("exec output: %w", err)
	}
	return rt.execExitCode(ctx, created.ID)
}

// execExitCode waits for the exec's process to be reaped (the output stream
// can end a moment before the engine records the exit) and returns its
// exit code.
func (rt *Runtime) execExitCode(ctx context.Context, execID string) (int, error) {
	for backoff := 5 * time.Millisecond; ; backoff = min(backoff*2, 200*time.Millisecond) {
		res, err := rt.cli.ExecInspect(ctx, execID, client.ExecInspectOptions{})
		if err != nil {
			return -1, fmt.Errorf("exec inspect: %w", err)
		}
		if !res.Running {
			return res.ExitCode, nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return -1, fmt.Errorf("exec: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
}
