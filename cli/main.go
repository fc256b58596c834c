package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/posener/complete"
	"github.com/willabides/kongplete"
	"golang.org/x/term"
)

// Version is set at build time with -ldflags "-X .../cli.Version=...".
var Version = "dev"

// VersionCmd prints the version.
type VersionCmd struct{}

// Run prints the version.
func (VersionCmd) Run(env *Env) error {
	fmt.Fprintln(env.Stdout, "kohakuriver", Version)
	return nil
}

// Root is the top-level command set.
type Root struct {
	Globals

	VPS      VPSCmd      `cmd:"" name:"vps" help:"Create, list and manage your VPSs."`
	SSH      SSHGroup    `cmd:"" name:"ssh" help:"Connect to a VPS with ssh, or write an ssh config for all of them."`
	Terminal TerminalCmd `cmd:"" help:"Run a command in a VPS through the host API (no SSH key needed)."`
	Login    LoginCmd    `cmd:"" help:"Save your API token in ~/.kohakuriver/auth.json."`
	User     UserCmd     `cmd:"" help:"Manage API users (admins)."`
	Node     NodeCmd     `cmd:"" help:"Show the cluster's nodes."`

	Up    UpCmd    `cmd:"" group:"Daemons" help:"Run host, agent and a demo VPS on this machine; prints the ssh line."`
	Host  HostCmd  `cmd:"" group:"Daemons" help:"Run the host: control plane API and SSH gateway."`
	Agent AgentCmd `cmd:"" group:"Daemons" help:"Run a node agent (needs Docker)."`
	// Recording reads the host's data dir: it runs on the host.
	Recording RecordingCmd `cmd:"" group:"Daemons" help:"List and replay recorded terminal sessions (on the host)."`

	Completion CompletionCmd `cmd:"" help:"Print the shell completion script (bash, zsh or fish)."`
	Version    VersionCmd    `cmd:"" help:"Print the version."`
}

// VPSCmd groups the VPS commands.
type VPSCmd struct {
	Create  VPSCreateCmd  `cmd:"" help:"Create a VPS and wait until its sshd is up."`
	List    VPSListCmd    `cmd:"" aliases:"ls" help:"List your VPSs (an admin's: all)."`
	Status  VPSStatusCmd  `cmd:"" help:"Show one VPS in detail."`
	Stop    VPSStopCmd    `cmd:"" help:"Stop a VPS; its disk, keys and SSH port are kept."`
	Start   VPSStartCmd   `cmd:"" help:"Start a stopped VPS."`
	Restart VPSRestartCmd `cmd:"" help:"Restart a VPS."`
	Delete  VPSDeleteCmd  `cmd:"" aliases:"rm" help:"Delete a VPS and its disk."`
	Keys    VPSKeysCmd    `cmd:"" help:"List, add or remove the SSH keys that may log in to a VPS."`
}

// SSHGroup is `kohakuriver ssh`: connecting is the default subcommand, so
// `kohakuriver ssh <task_id>` and `kohakuriver ssh connect <task_id>` are
// the same.
type SSHGroup struct {
	Connect SSHCmd       `cmd:"" default:"withargs" help:"Open an SSH session to a VPS through the gateway (the default: kohakuriver ssh <task_id>)."`
	Config  SSHConfigCmd `cmd:"" help:"Print or write an ssh_config with one Host entry per VPS."`
}

// Help is the detailed help of kohakuriver ssh.
func (SSHGroup) Help() string {
	return `Examples:
  kohakuriver ssh 7291847561928374651            # shell as the VPS's login user
  kohakuriver ssh web -- uname -a                # run a command (web is the VPS name)
  kohakuriver ssh web --local-port 2222          # then: ssh -p 2222 root@127.0.0.1
  kohakuriver ssh config --output ~/.ssh/kohakuriver_config`
}

const rootHelp = `Examples:
  kohakuriver login --token TOKEN -H cluster.example.org
  kohakuriver vps create --gen-ssh-key --name web
  kohakuriver ssh web
  kohakuriver ssh config --output ~/.ssh/kohakuriver_config
  kohakuriver vps list --format json

Settings come from flags, then the environment (KOHAKURIVER_HOST, KOHAKURIVER_PORT,
KOHAKURIVER_SSH_PROXY_PORT, KOHAKURIVER_TOKEN), then ~/.kohakuriver/auth.json.`

// exitError makes Main return code without printing anything: the program
// that failed (ssh, a command run by exec) has said why.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// exitCode is what kong's Exit hook panics with, so that --help and
// completion end run instead of the process.
type exitCode int

// Main parses args, runs the command and returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, processEnv())
}

// processEnv is the Env of the real process.
func processEnv() *Env {
	home, _ := os.UserHomeDir()
	sshPath, err := exec.LookPath("ssh")
	if err != nil {
		sshPath = "ssh" // running it reports what is missing
	}
	return &Env{
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		StdinTerminal:  term.IsTerminal(int(os.Stdin.Fd())),
		StderrTerminal: term.IsTerminal(int(os.Stderr.Fd())),
		ReadSecret:     func() ([]byte, error) { return term.ReadPassword(int(os.Stdin.Fd())) },
		Home:           home,
		SSH:            sshPath,
		Now:            time.Now,
		Getenv:         os.Getenv,
		Reexec: func(environ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			return syscall.Exec(exe, os.Args, environ)
		},
	}
}

// run is Main with its dependencies: tests call it with their own Env.
func run(ctx context.Context, args []string, env *Env) (code int) {
	env.fill()
	var root Root
	// One transport per run so that its idle connections are closed when
	// the command returns.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	defer transport.CloseIdleConnections()
	httpClient := &http.Client{Transport: transport}

	defer func() {
		if r := recover(); r != nil {
			c, ok := r.(exitCode)
			if !ok {
				panic(r) // not ours: a bug
			}
			code = int(c)
		}
	}()
	exit := func(c int) { panic(exitCode(c)) }
	parser, err := kong.New(&root,
		kong.Name("kohakuriver"),
		kong.Description("SSH access to the VPSs of a KohakuRiver cluster.\n\n"+rootHelp),
		kong.Writers(env.Stdout, env.Stderr),
		kong.Exit(exit),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.BindTo(ctx, (*context.Context)(nil)),
		kong.Bind(env, &root.Globals, httpClient),
		kong.BindSingletonProvider(func(g *Globals) *Output {
			return &Output{W: env.Stdout, JSON: g.Format == "json"}
		}),
		kong.BindSingletonProvider(func(g *Globals, env *Env, hc *http.Client) (*Cluster, error) {
			return g.cluster(env, hc, "")
		}),
	)
	if err != nil {
		fmt.Fprintln(env.Stderr, "kohakuriver:", err)
		return 2
	}
	// Answers shell completion requests (COMP_LINE set) and exits.
	kongplete.Complete(parser, kongplete.WithExitFunc(exit),
		kongplete.WithPredictor("file", complete.PredictFiles("*")))

	kctx, err := parser.Parse(args)
	if err != nil {
		fmt.Fprintln(env.Stderr, "kohakuriver: error:", err)
		if pe, ok := errors.AsType[*kong.ParseError](err); ok && pe.Context != nil {
			fmt.Fprintf(env.Stderr, "Run `%s --help` for usage.\n", strings.TrimSpace("kohakuriver "+commandPath(pe.Context)))
		}
		return 2
	}
	err = kctx.Run()
	if err == nil {
		return 0
	}
	if ee, ok := errors.AsType[exitError](err); ok {
		return ee.code
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		fmt.Fprintln(env.Stderr, "kohakuriver: interrupted")
		return 130
	}
	printError(env.Stderr, err)
	return 1
}

// commandPath is the command words of a parse context ("vps create").
func commandPath(kctx *kong.Context) string {
	var words []string
	for _, p := range kctx.Path {
		if p.Command != nil {
			words = append(words, p.Command.Name)
		}
	}
	return strings.Join(words, " ")
}

// printError writes err for the user with a hint about what to do next
// when the error is one the CLI recognises.
func printError(w io.Writer, err error) {
	msg := err.Error()
	fmt.Fprintln(w, "kohakuriver: error:", msg)
	if hint := hintFor(err); hint != "" {
		fmt.Fprintln(w, "  "+hint)
	}
}
