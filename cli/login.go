package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// LoginCmd saves the user's API token (and the host it belongs to) in
// ~/.kohakuriver/auth.json.
type LoginCmd struct {
	LoginToken string `name:"token" placeholder:"TOKEN" help:"The API token (default: read from stdin, or asked for on a terminal)."`
	NoVerify   bool   `name:"no-verify" help:"Save the token without checking it with the host."`
}

// Help is the detailed help.
func (LoginCmd) Help() string {
	return `The token is checked with the host (GET /api/v1/whoami) and saved with the host
name and ports in ~/.kohakuriver/auth.json (mode 0600). Later commands use that
host unless -H says otherwise; the token is never sent to another host.

Examples:
  kohakuriver login -H cluster.example.org            # asks for the token
  echo "$TOKEN" | kohakuriver login -H cluster.example.org
  kohakuriver login --token "$(cat admin.token)"      # on the host itself`
}

// maxTokenInput bounds the token read from stdin.
const maxTokenInput = 4 << 10

// Run checks the token and writes auth.json.
func (c *LoginCmd) Run(ctx context.Context, env *Env, g *Globals, hc *http.Client) error {
	token, err := c.readToken(env)
	if err != nil {
		return err
	}
	cl, err := g.cluster(env, hc, token)
	if err != nil {
		return err
	}
	who := "unverified"
	if !c.NoVerify {
		w, err := cl.API.Whoami(ctx)
		if err != nil {
			return fmt.Errorf("check the token with %s: %w", cl.BaseURL(), err)
		}
		who = w.Name
		if w.Admin {
			who += ", admin"
		}
	}
	// The SSH port is saved only when this login names it (flag or
	// environment): otherwise the host's report decides at each use, also
	// over a port that an older CLI saved as its guess.
	af := authFile{Token: token, Host: cl.Host, Port: cl.APIPort, SSHPort: g.SSHPort}
	b, err := json.MarshalIndent(af, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(env.authPath(), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save the token: %w", err)
	}
	fmt.Fprintf(env.Stderr, "Logged in to %s as %s; token saved in %s.\n", cl.BaseURL(), who, env.authPath())
	return nil
}

// readToken takes --token, else a line from stdin (prompting without echo
// on a terminal).
func (c *LoginCmd) readToken(env *Env) (string, error) {
	token := c.LoginToken
	if token == "" {
		if env.StdinTerminal {
			fmt.Fprint(env.Stderr, "API token: ")
			b, err := env.ReadSecret()
			fmt.Fprintln(env.Stderr)
			if err != nil {
				return "", fmt.Errorf("read the token: %w", err)
			}
			token = string(b)
		} else {
			line, err := bufio.NewReader(io.LimitReader(env.Stdin, maxTokenInput)).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return "", fmt.Errorf("read the token from stdin: %w", err)
			}
			token = line
		}
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", errors.New("no token given: pass --token TOKEN or pipe it on stdin (an admin creates one with `kohakuriver user add NAME`)")
	}
	if strings.ContainsAny(token, " \t\r\n") {
		return "", errors.New("the token holds spaces or line breaks; paste exactly the token `kohakuriver user add` printed")
	}
	return token, nil
}
