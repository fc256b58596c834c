package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/kohakuriver/kohakuriver/store"
)

// vpsRef is the argument every lifecycle command takes.
type vpsRef struct {
	Ref string `arg:"" name:"task_id" help:"Task id or name of the VPS."`
}

// VPSStopCmd stops a VPS.
type VPSStopCmd struct{ vpsRef }

// VPSStartCmd starts a stopped VPS.
type VPSStartCmd struct{ vpsRef }

// VPSRestartCmd restarts a VPS.
type VPSRestartCmd struct{ vpsRef }

// Run stops the VPS.
func (c *VPSStopCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	return lifecycle(env, out, "Stopping", c.Ref, func() (store.VPS, error) { return cl.API.StopVPS(ctx, c.Ref) })
}

// Run starts the VPS.
func (c *VPSStartCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	return lifecycle(env, out, "Starting", c.Ref, func() (store.VPS, error) { return cl.API.StartVPS(ctx, c.Ref) })
}

// Run restarts the VPS.
func (c *VPSRestartCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	return lifecycle(env, out, "Restarting", c.Ref, func() (store.VPS, error) { return cl.API.RestartVPS(ctx, c.Ref) })
}

// lifecycle runs one state change, showing progress while the node works.
func lifecycle(env *Env, out *Output, doing, ref string, call func() (store.VPS, error)) error {
	var v store.VPS
	err := env.wait(doing+" VPS "+ref, func() error {
		var err error
		v, err = call()
		return err
	})
	if err != nil {
		return fmt.Errorf("%s VPS %s: %w", strings.ToLower(doing), ref, err)
	}
	if out.JSON {
		return out.json(v)
	}
	fmt.Fprintf(out.W, "VPS %s is %s.\n", v.Ref(), v.Status)
	if v.Message != "" {
		fmt.Fprintf(out.W, "  %s\n", v.Message)
	}
	return nil
}

// VPSDeleteCmd deletes a VPS.
type VPSDeleteCmd struct {
	vpsRef
	Force bool `help:"Delete the record even when the VPS's node is offline or fails (its container then stays on the node)."`
	Yes   bool `short:"y" help:"Do not ask for confirmation."`
}

// Help is the detailed help.
func (VPSDeleteCmd) Help() string {
	return `On a terminal the command asks for confirmation; -y skips the question.

Examples:
  kohakuriver vps delete web
  kohakuriver vps delete 7291847561928374651 --force -y   # its node is gone`
}

// Run deletes the VPS after confirmation.
func (c *VPSDeleteCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	if env.StdinTerminal && !c.Yes {
		fmt.Fprintf(env.Stderr, "Delete VPS %s with its disk? This cannot be undone. [y/N] ", c.Ref)
		if !confirmed(env.Stdin) {
			return fmt.Errorf("not deleted (answer y to delete, or pass -y)")
		}
	}
	err := env.wait("Deleting VPS "+c.Ref, func() error { return cl.API.DeleteVPS(ctx, c.Ref, c.Force) })
	if err != nil {
		return fmt.Errorf("delete VPS %s: %w", c.Ref, err)
	}
	if out.JSON {
		return out.json(map[string]string{"deleted": c.Ref})
	}
	fmt.Fprintf(out.W, "VPS %s deleted.\n", c.Ref)
	return nil
}

// confirmed reads one answer line and reports whether it is yes.
func confirmed(r io.Reader) bool {
	line, _ := bufio.NewReader(io.LimitReader(r, 1024)).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}
