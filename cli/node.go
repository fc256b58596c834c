package cli

import (
	"context"
	"fmt"
	"strconv"

	"github.com/kohakuriver/kohakuriver/gateway/api"
)

// NodeCmd groups the node commands.
type NodeCmd struct {
	List   NodeListCmd   `cmd:"" aliases:"ls" help:"List nodes: online or offline, last heartbeat, capacity, VPS count."`
	Status NodeStatusCmd `cmd:"" help:"Show one node."`
}

// Help is the detailed help.
func (NodeCmd) Help() string {
	return `Examples:
  kohakuriver node list
  kohakuriver node status node1 --format json`
}

// NodeListCmd lists nodes.
type NodeListCmd struct{}

// Run lists the nodes.
func (c *NodeListCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	nodes, err := cl.API.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	if out.JSON {
		if nodes == nil {
			nodes = []api.NodeInfo{}
		}
		return out.json(nodes)
	}
	if len(nodes) == 0 {
		fmt.Fprintln(env.Stderr, "No node has registered: start one with `kohakuriver agent` on a Docker machine.")
		return nil
	}
	now := env.Now()
	t := newTable(out.W, "NAME", "STATUS", "LAST HEARTBEAT", "CORES", "MEMORY", "VPS", "ADDRESS")
	for _, n := range nodes {
		t.row(n.Name, string(n.Status), ago(now, n.LastHeartbeat), strconv.Itoa(n.Cores), formatMemory(n.MemoryMB),
			strconv.Itoa(n.VPSCount), n.Address)
	}
	return t.flush()
}

// NodeStatusCmd shows one node.
type NodeStatusCmd struct {
	Name string `arg:"" name:"hostname" help:"Node name."`
}

// Run shows the node.
func (c *NodeStatusCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	n, err := cl.API.Node(ctx, c.Name)
	if err != nil {
		return err
	}
	if out.JSON {
		return out.json(n)
	}
	now := env.Now()
	return fields(out.W,
		"name", n.Name, "status", string(n.Status), "last heartbeat", ago(now, n.LastHeartbeat),
		"cores", strconv.Itoa(n.Cores), "memory", formatMemory(n.MemoryMB), "vps count", strconv.Itoa(n.VPSCount),
		"address", n.Address, "registered", ago(now, n.RegisteredAt),
	)
}
