// Command kohakuriver is the SSH gateway, control plane, node agent and CLI
// of a KohakuRiver-style container cluster. See README.md.
package main

import (
	"os"

	"github.com/kohakuriver/kohakuriver/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
