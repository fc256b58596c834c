package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/store"
)

// Defaults of the global flags.
const (
	defaultHost    = "localhost"
	defaultAPIPort = 8000
	defaultSSHPort = 8002
)

// Globals are the flags every command shares. Host, Port and SSHPort have
// no kong default so that an unset flag can fall back to auth.json. The
// token has no flag (command lines show up in ps and shell history): it
// comes from KOHAKURIVER_TOKEN or auth.json.
type Globals struct {
	Host    string `short:"H" env:"KOHAKURIVER_HOST" placeholder:"HOST" help:"Host that runs the API and the SSH gateway (default: the host saved by login, else localhost)."`
	Port    int    `short:"P" env:"KOHAKURIVER_PORT" placeholder:"PORT" help:"Port of the host API (default 8000)."`
	SSHPort int    `name:"ssh-port" env:"KOHAKURIVER_SSH_PROXY_PORT" placeholder:"PORT" help:"Port of the host's SSH gateway (default 8002)."`
	Format  string `default:"table" enum:"table,json" help:"Output format: ${enum}."`
}

// Env is the outside world the user commands see. Main fills it from the
// process (processEnv); tests build their own. Zero fields get defaults in
// fill.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// StdinTerminal and StderrTerminal report whether stdin and stderr
	// are terminals: prompts and spinners appear only there.
	StdinTerminal, StderrTerminal bool
	// ReadSecret reads one line from the terminal without echo.
	ReadSecret func() ([]byte, error)
	// Home is the user's home directory: ~/.ssh and ~/.kohakuriver live
	// under it.
	Home string
	// SSH is the ssh client kohakuriver ssh runs.
	SSH string
	Now func() time.Time
	// Getenv reads the environment (KOHAKURIVER_TOKEN, GODEBUG).
	Getenv func(string) string
	// Reexec replaces the process with the same program and arguments
	// under the environment given (execve); it returns only on failure.
	// Nil where the process must not be replaced: tests run commands in
	// their own process.
	Reexec func(environ []string) error
}

func (env *Env) fill() {
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	if env.Stdout == nil {
		env.Stdout = io.Discard
	}
	if env.Stderr == nil {
		env.Stderr = io.Discard
	}
	if env.ReadSecret == nil {
		env.ReadSecret = func() ([]byte, error) { return nil, errors.New("no terminal to read from") }
	}
	if env.SSH == "" {
		env.SSH = "ssh"
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
}

// stateDir is ~/.kohakuriver.
func (env *Env) stateDir() string { return filepath.Join(env.Home, ".kohakuriver") }

// authPath is ~/.kohakuriver/auth.json.
func (env *Env) authPath() string { return filepath.Join(env.stateDir(), "auth.json") }

// knownHostsPath is the known_hosts file the CLI keeps for the gateway.
func (env *Env) knownHostsPath() string { return filepath.Join(env.stateDir(), "known_hosts") }

// sshDir is ~/.ssh.
func (env *Env) sshDir() string { return filepath.Join(env.Home, ".ssh") }

// expand resolves a leading ~/ against Home.
func (env *Env) expand(p string) string {
	if p == "~" {
		return env.Home
	}
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		return filepath.Join(env.Home, rest)
	}
	return p
}

// authFile is ~/.kohakuriver/auth.json. Host, Port and SSHPort say which
// host the token belongs to; the token is never sent to another host.
type authFile struct {
	Token   string `json:"token"`
	Host    string `json:"host,omitempty"`
	Port    int    `json:"port,omitempty"`
	SSHPort int    `json:"ssh_port,omitempty"`
}

// readAuth reads auth.json; a missing file is an empty authFile.
func readAuth(path string) (authFile, error) {
	var af authFile
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return af, nil
	}
	if err != nil {
		return af, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &af); err != nil {
		return af, fmt.Errorf("%s is not valid JSON (%v); run `kohakuriver login` to write it again", path, err)
	}
	return af, nil
}

// Cluster is the host a user command talks to: its API client and the
// addresses users connect to. Building it sends no request.
type Cluster struct {
	API *api.Client
	// Host is the host name of the API and the SSH gateway.
	Host string
	// APIPort and SSHPort are the API's and the gateway's main port.
	APIPort, SSHPort int
	// sshPortGuessed: no flag, environment or auth.json named the SSH
	// port, so SSHPort is the default, and the port the host reports
	// (pinGateway) replaces it.
	sshPortGuessed bool
}

// BaseURL is the API's base URL.
func (c *Cluster) BaseURL() string {
	return "http://" + net.JoinHostPort(c.Host, strconv.Itoa(c.APIPort))
}

// cluster resolves the flags, the environment and auth.json into a
// Cluster. token, when set, is used instead of any saved one (login).
func (g *Globals) cluster(env *Env, hc *http.Client, token string) (*Cluster, error) {
	af, err := readAuth(env.authPath())
	if err != nil {
		return nil, err
	}
	c := &Cluster{Host: g.Host, APIPort: g.Port, SSHPort: g.SSHPort}
	if c.Host == "" {
		c.Host = af.Host
	}
	if c.Host == "" {
		c.Host = defaultHost
	}
	if err := checkHost(c.Host); err != nil {
		return nil, err
	}
	sameHost := af.Host == "" || af.Host == c.Host
	if c.APIPort == 0 && sameHost {
		c.APIPort = af.Port
	}
	if c.APIPort == 0 {
		c.APIPort = defaultAPIPort
	}
	if c.SSHPort == 0 && sameHost {
		c.SSHPort = af.SSHPort
	}
	if c.SSHPort == 0 {
		c.SSHPort, c.sshPortGuessed = defaultSSHPort, true
	}
	if token == "" {
		token = strings.TrimSpace(env.Getenv("KOHAKURIVER_TOKEN"))
	}
	if token == "" {
		if af.Token == "" {
			return nil, errors.New("no API token: run `kohakuriver login` (ask an admin for a token; the admin token is admin.token in the host's data dir), or set KOHAKURIVER_TOKEN")
		}
		if !sameHost {
			return nil, fmt.Errorf("the token in %s is for host %s, not %s: run `kohakuriver login -H %s`, or set KOHAKURIVER_TOKEN",
				env.authPath(), af.Host, c.Host, c.Host)
		}
		token = af.Token
	}
	c.API = api.NewClient(c.BaseURL(), token, hc)
	return c, nil
}

// hostRE is a host name, IPv4 or IPv6 address. The host ends up as an
// ssh argument and in ssh_config, so nothing else may pass.
var hostRE = regexp.MustCompile(`^[A-Za-z0-9_.:][A-Za-z0-9_.:-]*$`)

// checkHost refuses values of --host that are not a host name or address.
func checkHost(h string) error {
	if !hostRE.MatchString(h) || len(h) > 253 {
		return fmt.Errorf("--host %q: give a host name or IP address only, no URL or port (set ports with -P/--port and --ssh-port)", h)
	}
	return nil
}

// checkVPS refuses VPS records whose identifiers could not have come from
// a sound host: they go into ssh arguments and ssh_config lines.
func checkVPS(v store.VPS) error {
	ok := store.IsTaskID(v.TaskID) && (v.Name == "" || store.ValidateName(v.Name) == nil) &&
		(v.LoginUser == "" || store.ValidateLoginUser(v.LoginUser) == nil) && v.SSHPort >= 0 && v.SSHPort < 65536
	if !ok {
		return fmt.Errorf("the host sent a VPS record with an invalid task id, name, login user or port (%q); the host and this CLI may be of different versions", v.TaskID)
	}
	return nil
}

// hintFor says what to do next about errors the CLI recognises.
func hintFor(err error) string {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return fmt.Sprintf("is the host running and reachable at %s? Set the host with -H/--host and -P/--port (or KOHAKURIVER_HOST and KOHAKURIVER_PORT).",
			hostOfURL(ue.URL))
	}
	switch api.StatusOf(err) {
	case http.StatusUnauthorized:
		return "run `kohakuriver login` with a valid token (an admin creates one with `kohakuriver user add NAME`)."
	case http.StatusForbidden:
		return "this needs an admin's token."
	}
	return ""
}

func hostOfURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return u.Scheme + "://" + u.Host
}
