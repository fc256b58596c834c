package cli

import (
	"context"
	"fmt"
	"strconv"

	"github.com/kohakuriver/kohakuriver/store"
)

// VPSStatusCmd shows one VPS.
type VPSStatusCmd struct {
	Ref string `arg:"" name:"task_id" help:"Task id or name of the VPS."`
}

// Help is the detailed help.
func (VPSStatusCmd) Help() string {
	return `Examples:
  kohakuriver vps status 7291847561928374651
  kohakuriver vps status web --format json`
}

// Run shows the VPS.
func (c *VPSStatusCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	v, err := cl.API.GetVPS(ctx, c.Ref)
	if err != nil {
		return err
	}
	if out.JSON {
		return out.json(v)
	}
	return printVPS(out, env, v)
}

// printVPS shows every field of v as "key: value" lines, then its keys.
func printVPS(out *Output, env *Env, v store.VPS) error {
	now := env.Now()
	cores, mem := "no limit", "no limit"
	if v.Cores > 0 {
		cores = strconv.Itoa(v.Cores)
	}
	if v.MemoryMB > 0 {
		mem = formatMemory(v.MemoryMB)
	}
	err := fields(out.W,
		"task id", v.TaskID, "name", v.Name, "status", string(v.Status), "message", v.Message,
		"owner", v.Owner, "node", v.Node, "image", v.Image, "cores", cores, "memory", mem,
		"ssh port", strconv.Itoa(v.SSHPort), "login user", v.LoginUser, "key mode", string(v.KeyMode),
		"created", v.CreatedAt.Local().Format("2006-01-02 15:04:05")+" ("+ago(now, v.CreatedAt)+")",
		"updated", ago(now, v.UpdatedAt),
	)
	if err != nil {
		return err
	}
	fmt.Fprintf(out.W, "keys (%d):\n", len(v.Keys))
	for _, k := range v.Keys {
		fmt.Fprintf(out.W, "  %s  %s\n", k.Fingerprint, keyComment(k.Line))
	}
	return nil
}
