package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
)

// agentTimeout bounds a report when the caller's context has no deadline.
const agentTimeout = 15 * time.Second

// AgentAPI is the agent's client of the host's agent endpoints, signed
// with the cluster token (clusterauth HMAC). Fields must not change while
// calls are in flight; HTTPClient nil means http.DefaultClient.
type AgentAPI struct {
	BaseURL      string // the host API, "http://host:8000"
	ClusterToken string
	HTTPClient   *http.Client
}

// Register reports the node and its VPSs; the host marks it online.
func (a *AgentAPI) Register(ctx context.Context, rep AgentReport) error {
	return a.post(ctx, "/api/v1/agent/register", rep)
}

// Heartbeat reports again. An *Error with Status 404 means the host does
// not know the node (it was forgotten): Register again.
func (a *AgentAPI) Heartbeat(ctx context.Context, rep AgentReport) error {
	return a.post(ctx, "/api/v1/agent/heartbeat", rep)
}

func (a *AgentAPI) post(ctx context.Context, path string, rep AgentReport) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, agentTimeout)
		defer cancel()
	}
	body, err := json.Marshal(rep)
	if err != nil {
		return fmt.Errorf("report to host: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(a.BaseURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("report to host: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	// Signed once, after the URL is final: the signature binds it. The
	// request is not retried (a retry would be refused as replayed).
	clusterauth.Sign(req, a.ClusterToken, body)
	hc := a.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("report to host: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readError(resp)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return nil
}
