// Package cli is the kohakuriver command line: the host and agent daemons
// and the user commands, parsed with kong.
package cli

import (
	"fmt"
	"os"

	"github.com/alecthomas/kong"
)

// Version is set at build time with -ldflags "-X .../cli.Version=...".
var Version = "dev"

// VersionCmd prints the version.
type VersionCmd struct{}

// Run prints the version.
func (VersionCmd) Run() error {
	fmt.Println("kohakuriver", Version)
	return nil
}

// Root is the top-level command set.
type Root struct {
	Up      UpCmd      `cmd:"" help:"Run host, agent and a demo VPS on this machine; prints the ssh line."`
	Host    HostCmd    `cmd:"" help:"Run the host: control plane API and SSH gateway."`
	Agent   AgentCmd   `cmd:"" help:"Run a node agent (needs Docker)."`
	Version VersionCmd `cmd:"" help:"Print the version."`
}

// Main parses args, runs the command and returns the process exit code.
func Main(args []string) int {
	var root Root
	parser, err := kong.New(&root,
		kong.Name("kohakuriver"),
		kong.Description("SSH access to the VPSs of a KohakuRiver cluster."),
		kong.UsageOnError(),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kohakuriver:", err)
		return 2
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kohakuriver:", err)
		return 2
	}
	if err := kctx.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "kohakuriver:", err)
		return 1
	}
	return 0
}
