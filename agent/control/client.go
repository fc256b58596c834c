package control

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/store"
)

// Client is the host's side of the control API; it implements
// api.NodeAgent by calling the agent at node.Address.
type Client struct {
	http *http.Client
}

var _ api.NodeAgent = (*Client)(nil)

// maxExecStdin bounds stdin sent with exec: it travels base64 in one signed
// request body.
const maxExecStdin = 512 << 10

// NewClient returns a Client that signs requests with the cluster token.
func NewClient(clusterToken string) *Client {
	return &Client{http: &http.Client{
		Transport: &clusterauth.Transport{Token: clusterToken},
		// Create waits for the VPS's sshd; exec may run long. Each call
		// bounds itself with its context instead.
		Timeout: 0,
	}}
}

// Error is a refusal by the agent.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("node agent: %s (HTTP %d)", e.Message, e.Status) }

func (c *Client) do(ctx context.Context, node store.Node, method, path string, body, out any, timeout time.Duration) error {
	if node.Address == "" {
		return fmt.Errorf("node %s has no agent address", node.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+node.Address+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out)
}

func decodeError(resp *http.Response) error {
	var eb errorBody
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&eb)
	if eb.Error == "" {
		eb.Error = http.StatusText(resp.StatusCode)
	}
	return &Error{Status: resp.StatusCode, Message: eb.Error}
}

func vpsPath(taskID, suffix string) string {
	return "/v1/vps/" + url.PathEscape(taskID) + suffix
}

// CreateVPS implements api.NodeAgent.
func (c *Client) CreateVPS(ctx context.Context, node store.Node, spec api.VPSSpec) (api.VPSState, error) {
	spec.Node = node.Name
	var st api.VPSState
	err := c.do(ctx, node, http.MethodPost, "/v1/vps", spec, &st, 3*time.Minute)
	return st, err
}

// StartVPS implements api.NodeAgent.
func (c *Client) StartVPS(ctx context.Context, node store.Node, taskID string) (api.VPSState, error) {
	var st api.VPSState
	err := c.do(ctx, node, http.MethodPost, vpsPath(taskID, "/start"), nil, &st, 2*time.Minute)
	return st, err
}

// StopVPS implements api.NodeAgent.
func (c *Client) StopVPS(ctx context.Context, node store.Node, taskID string) error {
	return c.do(ctx, node, http.MethodPost, vpsPath(taskID, "/stop"), nil, nil, 2*time.Minute)
}

// RestartVPS implements api.NodeAgent.
func (c *Client) RestartVPS(ctx context.Context, node store.Node, taskID string) (api.VPSState, error) {
	var st api.VPSState
	err := c.do(ctx, node, http.MethodPost, vpsPath(taskID, "/restart"), nil, &st, 2*time.Minute)
	return st, err
}

// DeleteVPS implements api.NodeAgent.
func (c *Client) DeleteVPS(ctx context.Context, node store.Node, taskID string) error {
	return c.do(ctx, node, http.MethodDelete, vpsPath(taskID, ""), nil, nil, 2*time.Minute)
}

// SetKeys implements api.NodeAgent.
func (c *Client) SetKeys(ctx context.Context, node store.Node, taskID, loginUser string, authorizedKeys []string) error {
	return c.do(ctx, node, http.MethodPut, vpsPath(taskID, "/keys"),
		keysRequest{LoginUser: loginUser, AuthorizedKeys: authorizedKeys}, nil, time.Minute)
}

// List returns the VPS states the agent reports.
func (c *Client) List(ctx context.Context, node store.Node) ([]api.VPSState, error) {
	var out []api.VPSState
	err := c.do(ctx, node, http.MethodGet, "/v1/vps", nil, &out, 30*time.Second)
	return out, err
}

// Exec implements api.NodeAgent: runs cmd in the VPS, streaming its output.
func (c *Client) Exec(ctx context.Context, node store.Node, taskID string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	var in []byte
	if stdin != nil {
		b, err := io.ReadAll(io.LimitReader(stdin, maxExecStdin+1))
		if err != nil {
			return -1, err
		}
		if len(b) > maxExecStdin {
			return -1, fmt.Errorf("exec stdin is larger than %d KiB; copy files with scp instead", maxExecStdin>>10)
		}
		in = b
	}
	body, _ := json.Marshal(execRequest{Cmd: cmd, Stdin: base64.StdEncoding.EncodeToString(in)})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+node.Address+vpsPath(taskID, "/exec"), bytes.NewReader(body))
	if err != nil {
		return -1, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return -1, fmt.Errorf("node %s: %w", node.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return -1, decodeError(resp)
	}
	return api.ReadExecFrames(resp.Body, stdout, stderr)
}
