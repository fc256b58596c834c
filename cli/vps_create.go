package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/store"
)

// VPSCreateCmd creates a VPS and waits until its sshd is up.
type VPSCreateCmd struct {
	Target    string   `short:"t" name:"target" placeholder:"NODE" help:"Node to run the VPS on (default: the least loaded online node)."`
	Name      string   `placeholder:"NAME" help:"Optional name, usable instead of the task id (a-z, 0-9, '-')."`
	Image     string   `placeholder:"IMAGE" help:"Docker image (default: the host's VPS image)."`
	Cores     int      `short:"c" placeholder:"N" help:"CPU cores (default: no limit)."`
	Memory    string   `short:"m" placeholder:"SIZE" help:"Memory limit such as 512M or 2G (default: no limit)."`
	LoginUser string   `name:"login-user" placeholder:"USER" help:"User inside the VPS whose authorized_keys get the keys (default root)."`
	Keys      KeyFlags `embed:""`
}

// Help is the detailed help.
func (VPSCreateCmd) Help() string {
	return `SSH key modes (choose at most one; SSH is always enabled):
  (none), --ssh            upload your ~/.ssh/id_*.pub
  --gen-ssh-key            make a new ED25519 pair here; the private key stays on this
                           machine at ~/.ssh/kohakuriver_<task_id> (or --key-out-file)
  --public-key-file PATH   authorize the key(s) in PATH
  --public-key-string KEY  authorize KEY
  --no-ssh-key             authorize no key

Examples:
  kohakuriver vps create --ssh
  kohakuriver vps create -t node1 --name web --gen-ssh-key -c 2 -m 4G
  kohakuriver vps create --public-key-string "ssh-ed25519 AAAA... me@laptop"
  kohakuriver vps create --gen-ssh-key --key-out-file ~/.ssh/web_key --format json`
}

// createdVPS is the JSON answer of vps create: the VPS plus where its new
// private key is and the commands that log in.
type createdVPS struct {
	store.VPS
	PrivateKeyFile string   `json:"private_key_file,omitempty"`
	SSHCommands    []string `json:"ssh_commands"`
}

// Validate refuses bad flags while parsing: before the token is looked
// up, any file is read or any request is sent.
func (c *VPSCreateCmd) Validate() error {
	if _, err := c.request(); err != nil {
		return err
	}
	return c.Keys.check()
}

// Run creates the VPS.
func (c *VPSCreateCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	req, err := c.request()
	if err != nil {
		return err
	}
	plan, err := c.Keys.resolve(env, c.Name) // checks the flags first
	if err != nil {
		return err
	}
	req.KeyMode, req.PublicKeys = plan.Mode, plan.Lines
	for _, f := range plan.From {
		fmt.Fprintf(env.Stderr, "Authorizing the key in %s\n", f)
	}
	if plan.GenPath != "" {
		fmt.Fprintln(env.Stderr, "Generated a new ED25519 key pair; the private key stays on this machine.")
	}

	where := "the least loaded node"
	if c.Target != "" {
		where = "node " + c.Target
	}
	var v store.VPS
	err = env.wait("Creating the VPS on "+where+" and waiting for its sshd", func() error {
		var err error
		v, err = cl.API.CreateVPS(ctx, req)
		return err
	})
	if err == nil {
		err = checkVPS(v)
	}
	if err != nil {
		return c.failed(ctx, env, plan, err)
	}

	res := createdVPS{VPS: v}
	if plan.GenPath != "" {
		if res.PrivateKeyFile, err = plan.finishGenerated(env, v.TaskID); err != nil {
			fmt.Fprintln(env.Stderr, "kohakuriver: warning:", err)
		}
	}
	known, err := pinGateway(ctx, env, cl)
	if err != nil {
		fmt.Fprintf(env.Stderr, "kohakuriver: warning: %v; ssh will ask you to confirm the gateway's host key\n", err)
	}
	res.SSHCommands = connectCommands(env, cl, v, known, res.PrivateKeyFile)
	if out.JSON {
		return out.json(res)
	}
	return printCreated(out, res)
}

// request checks the flags that need no file or network and builds the
// request without keys.
func (c *VPSCreateCmd) request() (api.CreateVPSRequest, error) {
	req := api.CreateVPSRequest{Name: c.Name, Node: c.Target, Image: c.Image, Cores: c.Cores, LoginUser: c.LoginUser}
	if c.Name != "" {
		if err := store.ValidateNewName(c.Name); err != nil {
			return req, fmt.Errorf("--name: %s", userMessage(err))
		}
	}
	if c.LoginUser != "" {
		if err := store.ValidateLoginUser(c.LoginUser); err != nil {
			return req, fmt.Errorf("--login-user: %s", userMessage(err))
		}
	}
	if c.Cores < 0 {
		return req, errors.New("--cores: give a positive number of cores, or leave it out for no limit")
	}
	if c.Memory != "" {
		mb, err := parseMemory(c.Memory)
		if err != nil {
			return req, err
		}
		req.MemoryMB = mb
	}
	return req, nil
}

// failed cleans up after a create that did not succeed and explains it.
func (c *VPSCreateCmd) failed(ctx context.Context, env *Env, plan keyPlan, err error) error {
	if plan.GenPath != "" {
		if hostRefused(err) {
			removeKeyPair(plan.GenPath)
		} else {
			// The host creates with its own context and goes on after the
			// connection breaks, a proxy times out or its answer is
			// unreadable: the VPS may trust the new key, so keep it.
			why := "the create did not finish cleanly"
			if ctx.Err() != nil {
				why = "interrupted"
			}
			ref := "<task_id>"
			if c.Name != "" {
				ref = c.Name
			}
			fmt.Fprintf(env.Stderr, "kohakuriver: %s: the host may still have created the VPS, so the new private key stays at %s (public key %s.pub).\n"+
				"  Check with `kohakuriver vps list` or `kohakuriver vps status %s`; if it exists, log in with `kohakuriver ssh %s --key %s`, otherwise delete the key pair.\n",
				why, plan.GenPath, plan.GenPath, ref, ref, shellQuote(plan.GenPath))
		}
	}
	if s := api.StatusOf(err); s == http.StatusBadGateway || s == http.StatusGatewayTimeout {
		return fmt.Errorf("%w\n  the failed VPS stays listed so you can see why: `kohakuriver vps list`; remove it with `kohakuriver vps delete <task_id>`", err)
	}
	return fmt.Errorf("create VPS: %w", err)
}

// hostRefused reports whether err is the host API clearly refusing the
// create (an HTTP 4xx answer): only then can no VPS trust a generated key.
// Anything else (no answer, 5xx from the host or a proxy, an unreadable
// answer, a bad record) leaves the VPS possibly created.
func hostRefused(err error) bool {
	s := api.StatusOf(err)
	return s >= 400 && s < 500
}

// connectCommands are the command lines that log in to v: kohakuriver ssh,
// then plain ssh through the gateway's main port (username routing) and
// through the VPS's own port (port routing).
func connectCommands(env *Env, cl *Cluster, v store.VPS, known, keyFile string) []string {
	kr := "kohakuriver ssh " + v.TaskID
	if keyFile != "" && keyFile != generatedKeyPath(env, v.TaskID) {
		kr += " --key " + shellQuote(keyFile)
	}
	var opts []string
	if keyFile != "" {
		opts = append(opts, "-i", shellQuote(keyFile))
	}
	if known != "" {
		for _, o := range hostKeyOptions(known) {
			opts = append(opts, shellQuote(o))
		}
	}
	o := strings.Join(opts, " ")
	if o != "" {
		o += " "
	}
	login := v.LoginUser
	if login == "" {
		login = store.DefaultLoginUser
	}
	return []string{
		kr,
		fmt.Sprintf("ssh %s-p %d %s@%s", o, cl.SSHPort, v.TaskID, cl.Host),
		fmt.Sprintf("ssh %s-p %d %s@%s", o, v.SSHPort, login, cl.Host),
	}
}

func printCreated(out *Output, res createdVPS) error {
	v := res.VPS
	fmt.Fprintf(out.W, "VPS %s is %s.\n\n", v.Ref(), v.Status)
	kv := []string{
		"  task id", v.TaskID, "  name", v.Name, "  node", v.Node,
		"  ssh port", strconv.Itoa(v.SSHPort), "  login user", v.LoginUser,
		"  key mode", string(v.KeyMode),
	}
	if res.PrivateKeyFile != "" {
		kv = append(kv, "  private key", res.PrivateKeyFile+" (it never left this machine)")
	}
	if err := fields(out.W, kv...); err != nil {
		return err
	}
	if v.KeyMode == store.KeyModeNone {
		fmt.Fprintln(out.W, "\nNo key is authorized: ssh logs in with the image's own method (e.g. a password), which the gateway relays.")
	}
	fmt.Fprintln(out.W, "\nConnect with:")
	for _, l := range res.SSHCommands {
		fmt.Fprintln(out.W, "  "+l)
	}
	return nil
}
