package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

// Default Client timeouts, used when a call's context has no deadline.
const (
	// DefaultTimeout bounds reads and small changes.
	DefaultTimeout = 30 * time.Second
	// DefaultLongTimeout bounds calls that wait for a node (create,
	// start, stop, restart, delete). It is longer than the host's own
	// bound on the node (3 minutes for create) so that the client gets
	// the host's answer, a 504 included, instead of giving up first.
	DefaultLongTimeout = 4 * time.Minute
)

// Client calls the host API with a user's token; the CLI uses it. Its
// methods are safe for concurrent use. Refusals are *Error values, with
// the host's message for the user.
type Client struct {
	baseURL string
	token   string
	http    *http.Client

	// Timeout and LongTimeout (defaults DefaultTimeout and
	// DefaultLongTimeout) apply to calls whose context has no deadline;
	// Exec has none (it runs as long as the command). Set them before
	// the first call.
	Timeout     time.Duration
	LongTimeout time.Duration
}

// NewClient returns a Client for the API at baseURL ("http://host:8000").
// httpClient nil means a new http.Client without its own timeout (the
// calls bound themselves).
func NewClient(baseURL, token string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = &http.Client{}
	}
	return &Client{
		baseURL: strings.TrimRight(baseURL, "/"), token: token, http: httpClient,
		Timeout: DefaultTimeout, LongTimeout: DefaultLongTimeout,
	}
}

// do sends a JSON request and decodes a JSON answer into out (nil: none).
func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, in, out any) error {
	if _, ok := ctx.Deadline(); !ok && timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // reuse the connection
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.baseURL+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		// *url.Error names the URL, never the header with the token.
		return nil, fmt.Errorf("cannot reach the host API: %w", err)
	}
	return resp, nil
}

// readError turns an error answer into *Error.
func readError(resp *http.Response) error {
	var eb errorBody
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
		eb.Error = http.StatusText(resp.StatusCode)
		if s := strings.TrimSpace(string(data)); s != "" && len(s) < 200 {
			eb.Error += ": " + s
		}
	}
	return &Error{Status: resp.StatusCode, Message: eb.Error}
}

func vpsPath(ref, suffix string) string {
	return "/api/v1/vps/" + url.PathEscape(ref) + suffix
}

// Health reports whether the host answers GET /healthz.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, c.Timeout, http.MethodGet, "/healthz", nil, nil)
}

// Whoami returns the token's user.
func (c *Client) Whoami(ctx context.Context) (Whoami, error) {
	var out Whoami
	err := c.do(ctx, c.Timeout, http.MethodGet, "/api/v1/whoami", nil, &out)
	return out, err
}

// Gateway returns the gateway's host keys and address, for known_hosts.
func (c *Client) Gateway(ctx context.Context) (GatewayInfo, error) {
	var out GatewayInfo
	err := c.do(ctx, c.Timeout, http.MethodGet, "/api/v1/gateway", nil, &out)
	return out, err
}

// CreateUser creates a user (admin only); the answer holds its token, shown
// only this once.
func (c *Client) CreateUser(ctx context.Context, name string, admin bool) (NewUser, error) {
	var out NewUser
	err := c.do(ctx, c.Timeout, http.MethodPost, "/api/v1/users", CreateUserRequest{Name: name, Admin: admin}, &out)
	return out, err
}

// Users lists the users (admin only).
func (c *Client) Users(ctx context.Context) ([]UserInfo, error) {
	var out []UserInfo
	err := c.do(ctx, c.Timeout, http.MethodGet, "/api/v1/users", nil, &out)
	return out, err
}

// DeleteUser deletes a user (admin only).
func (c *Client) DeleteUser(ctx context.Context, name string) error {
	return c.do(ctx, c.Timeout, http.MethodDelete, "/api/v1/users/"+url.PathEscape(name), nil, nil)
}

// CreateVPS creates a VPS and returns it running. When the node fails the
// error is an *Error (502 or 504) and the record stays, failed, for
// GetVPS to show; DeleteVPS removes it.
func (c *Client) CreateVPS(ctx context.Context, req CreateVPSRequest) (store.VPS, error) {
	var out store.VPS
	err := c.do(ctx, c.LongTimeout, http.MethodPost, "/api/v1/vps", req, &out)
	return out, err
}

// ListVPS lists the caller's VPSs (an admin's: all).
func (c *Client) ListVPS(ctx context.Context) ([]store.VPS, error) {
	var out []store.VPS
	err := c.do(ctx, c.Timeout, http.MethodGet, "/api/v1/vps", nil, &out)
	return out, err
}

// GetVPS returns a VPS by task id or name.
func (c *Client) GetVPS(ctx context.Context, ref string) (store.VPS, error) {
	var out store.VPS
	err := c.do(ctx, c.Timeout, http.MethodGet, vpsPath(ref, ""), nil, &out)
	return out, err
}

// StopVPS stops a VPS, keeping its disk, keys and port.
func (c *Client) StopVPS(ctx context.Context, ref string) (store.VPS, error) {
	return c.lifecycle(ctx, ref, "/stop")
}

// StartVPS starts a stopped (or failed) VPS.
func (c *Client) StartVPS(ctx context.Context, ref string) (store.VPS, error) {
	return c.lifecycle(ctx, ref, "/start")
}

// RestartVPS restarts a VPS.
func (c *Client) RestartVPS(ctx context.Context, ref string) (store.VPS, error) {
	return c.lifecycle(ctx, ref, "/restart")
}

func (c *Client) lifecycle(ctx context.Context, ref, op string) (store.VPS, error) {
	var out store.VPS
	err := c.do(ctx, c.LongTimeout, http.MethodPost, vpsPath(ref, op), nil, &out)
	return out, err
}

// DeleteVPS deletes a VPS and its container. With force, the record is
// deleted even when its node is offline or fails; the container then stays
// on the node.
func (c *Client) DeleteVPS(ctx context.Context, ref string, force bool) error {
	p := vpsPath(ref, "")
	if force {
		p += "?force=1"
	}
	return c.do(ctx, c.LongTimeout, http.MethodDelete, p, nil, nil)
}

// Keys lists a VPS's authorized keys.
func (c *Client) Keys(ctx context.Context, ref string) ([]store.AuthorizedKey, error) {
	var out []store.AuthorizedKey
	err := c.do(ctx, c.Timeout, http.MethodGet, vpsPath(ref, "/keys"), nil, &out)
	return out, err
}

// AddKeys adds authorized_keys lines to a VPS (duplicates are skipped) and
// returns its keys.
func (c *Client) AddKeys(ctx context.Context, ref string, lines []string) ([]store.AuthorizedKey, error) {
	var out []store.AuthorizedKey
	err := c.do(ctx, c.LongTimeout, http.MethodPost, vpsPath(ref, "/keys"), KeysRequest{PublicKeys: lines}, &out)
	return out, err
}

// RemoveKey removes the key with fingerprint ("SHA256:...") from a VPS and
// returns its keys.
func (c *Client) RemoveKey(ctx context.Context, ref, fingerprint string) ([]store.AuthorizedKey, error) {
	var out []store.AuthorizedKey
	err := c.do(ctx, c.LongTimeout, http.MethodDelete, vpsPath(ref, "/keys/"+url.PathEscape(fingerprint)), nil, &out)
	return out, err
}

// Exec runs cmd in a VPS with stdin (nil: none; at most MaxExecStdin
// bytes, read before the call) and copies its output to stdout and stderr
// (nil discards) as it arrives. It returns the command's exit code. A
// refusal before the command runs is an *Error; a failure while it runs
// wraps ErrExecFailed or ErrExecIncomplete. Only ctx bounds it.
func (c *Client) Exec(ctx context.Context, ref string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	req := ExecRequest{Cmd: cmd}
	if stdin != nil {
		in, err := io.ReadAll(io.LimitReader(stdin, MaxExecStdin+1))
		if err != nil {
			return -1, fmt.Errorf("exec: read stdin: %w", err)
		}
		if len(in) > MaxExecStdin {
			return -1, fmt.Errorf("exec: stdin is larger than %d KiB; copy files with scp instead", MaxExecStdin>>10)
		}
		req.Stdin = base64.StdEncoding.EncodeToString(in)
	}
	resp, err := c.send(ctx, http.MethodPost, vpsPath(ref, "/exec"), req)
	if err != nil {
		return -1, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return -1, readError(resp)
	}
	return ReadExecFrames(resp.Body, stdout, stderr)
}

// Nodes lists the nodes with their VPS counts.
func (c *Client) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var out []NodeInfo
	err := c.do(ctx, c.Timeout, http.MethodGet, "/api/v1/nodes", nil, &out)
	return out, err
}

// Node returns one node.
func (c *Client) Node(ctx context.Context, name string) (NodeInfo, error) {
	var out NodeInfo
	err := c.do(ctx, c.Timeout, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name), nil, &out)
	return out, err
}
