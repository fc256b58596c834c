package cli

import (
	"context"
	"fmt"
	"strconv"

	"github.com/kohakuriver/kohakuriver/store"
)

// VPSListCmd lists the caller's VPSs.
type VPSListCmd struct{}

// Help is the detailed help.
func (VPSListCmd) Help() string {
	return `Examples:
  kohakuriver vps list
  kohakuriver vps list --format json | jq -r '.[].task_id'`
}

// Run lists the VPSs.
func (c *VPSListCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	list, err := cl.API.ListVPS(ctx)
	if err != nil {
		return fmt.Errorf("list VPSs: %w", err)
	}
	if out.JSON {
		if list == nil {
			list = []store.VPS{}
		}
		return out.json(list)
	}
	if len(list) == 0 {
		fmt.Fprintln(env.Stderr, "No VPS yet: create one with `kohakuriver vps create`.")
		return nil
	}
	now := env.Now()
	t := newTable(out.W, "TASK ID", "NAME", "STATUS", "NODE", "SSH PORT", "OWNER", "IMAGE", "CREATED")
	for _, v := range list {
		t.row(v.TaskID, v.Name, string(v.Status), v.Node, strconv.Itoa(v.SSHPort), v.Owner, v.Image, ago(now, v.CreatedAt))
	}
	return t.flush()
}
