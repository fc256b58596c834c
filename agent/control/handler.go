package control

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/store"
)

// Runtime is what the agent needs of the node's container runtime;
// *docker.Runtime implements it.
type Runtime interface {
	Create(ctx context.Context, spec docker.Spec) (docker.Info, error)
	Start(ctx context.Context, taskID string) (docker.Info, error)
	Stop(ctx context.Context, taskID string) error
	Restart(ctx context.Context, taskID string) (docker.Info, error)
	Remove(ctx context.Context, taskID string) error
	SetAuthorizedKeys(ctx context.Context, taskID, loginUser string, lines []string) error
	Exec(ctx context.Context, taskID string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
	List(ctx context.Context) ([]docker.Info, error)
	SSHAddr(ctx context.Context, taskID string) (string, error)
}

var _ Runtime = (*docker.Runtime)(nil)

// Request bodies of the control API.
type (
	keysRequest struct {
		LoginUser      string   `json:"login_user"`
		AuthorizedKeys []string `json:"authorized_keys"`
	}
	execRequest struct {
		Cmd   []string `json:"cmd"`
		Stdin string   `json:"stdin,omitempty"` // base64
	}
	errorBody struct {
		Error string `json:"error"`
	}
)

// NewHandler returns the agent's control API for node (the agent's name),
// authenticated with v.
func NewHandler(v *clusterauth.Verifier, rt Runtime, node string, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{rt: rt, node: node, log: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vps", h.list)
	mux.HandleFunc("POST /v1/vps", h.create)
	mux.HandleFunc("POST /v1/vps/{id}/start", h.lifecycle)
	mux.HandleFunc("POST /v1/vps/{id}/stop", h.lifecycle)
	mux.HandleFunc("POST /v1/vps/{id}/restart", h.lifecycle)
	mux.HandleFunc("DELETE /v1/vps/{id}", h.lifecycle)
	mux.HandleFunc("PUT /v1/vps/{id}/keys", h.keys)
	mux.HandleFunc("POST /v1/vps/{id}/exec", h.exec)
	return clusterauth.MiddlewareWithLogger(v, logger, mux)
}

type handler struct {
	rt   Runtime
	node string // this agent's name: creates for another are refused
	log  *slog.Logger
}

// detached returns a context for a state-changing request that does not end
// when the host hangs up: a create, stop or key change the host asked for is
// finished and shows up in the next report, rather than half done (a
// container made and then removed while the host, restarted, already saw it
// running). It is still bounded.
func detached(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), 3*time.Minute)
}

// State converts a runtime snapshot into what the host stores.
func State(info docker.Info) api.VPSState {
	return api.VPSState{TaskID: info.TaskID, Running: info.State == docker.StateRunning, HostKeys: info.HostKeys}
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	infos, err := h.rt.List(r.Context())
	if err != nil {
		h.fail(w, err)
		return
	}
	out := make([]api.VPSState, 0, len(infos))
	for _, info := range infos {
		out = append(out, State(info))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	var spec api.VPSSpec
	if !decode(w, r, &spec) {
		return
	}
	if !store.IsTaskID(spec.TaskID) {
		writeJSON(w, http.StatusBadRequest, errorBody{"task id must be 19 digits"})
		return
	}
	if spec.Node != h.node {
		// See api.VPSSpec.Node: a replayed or misrouted create.
		h.log.Warn("create for another node refused", "vps", spec.TaskID, "for_node", spec.Node)
		writeJSON(w, http.StatusMisdirectedRequest, errorBody{fmt.Sprintf("this create is for node %q; this agent is node %q (check the node's --advertise address)", spec.Node, h.node)})
		return
	}
	ctx, cancel := detached(r)
	defer cancel()
	info, err := h.rt.Create(ctx, docker.Spec{
		TaskID: spec.TaskID, Image: spec.Image, Cores: float64(spec.Cores), MemoryMB: spec.MemoryMB,
		LoginUser: spec.LoginUser, AuthorizedKeys: spec.AuthorizedKeys,
	})
	if err != nil {
		h.fail(w, err)
		return
	}
	h.log.Info("vps created", "vps", spec.TaskID, "image", info.Image)
	writeJSON(w, http.StatusCreated, State(info))
}

func (h *handler) lifecycle(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !store.IsTaskID(id) {
		writeJSON(w, http.StatusBadRequest, errorBody{"task id must be 19 digits"})
		return
	}
	ctx, cancel := detached(r)
	defer cancel()
	var (
		info docker.Info
		err  error
	)
	switch {
	case r.Method == http.MethodDelete:
		err = h.rt.Remove(ctx, id)
		if errors.Is(err, docker.ErrNotFound) {
			err = nil // already gone: deleting is idempotent
		}
	case r.URL.Path == "/v1/vps/"+id+"/stop":
		err = h.rt.Stop(ctx, id)
	case r.URL.Path == "/v1/vps/"+id+"/start":
		info, err = h.rt.Start(ctx, id)
	default:
		info, err = h.rt.Restart(ctx, id)
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	h.log.Info("vps changed", "vps", id, "action", r.Method+" "+r.URL.Path)
	if info.TaskID == "" {
		info.TaskID = id
	}
	writeJSON(w, http.StatusOK, State(info))
}

func (h *handler) keys(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req keysRequest
	if !decode(w, r, &req) {
		return
	}
	ctx, cancel := detached(r)
	defer cancel()
	if err := h.rt.SetAuthorizedKeys(ctx, id, req.LoginUser, req.AuthorizedKeys); err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (h *handler) exec(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req execRequest
	if !decode(w, r, &req) {
		return
	}
	if len(req.Cmd) == 0 {
		writeJSON(w, http.StatusBadRequest, errorBody{"cmd is empty: give the command to run"})
		return
	}
	stdin, err := base64.StdEncoding.DecodeString(req.Stdin)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{"stdin must be base64"})
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fw := &frameWriter{w: w, enc: json.NewEncoder(w)}
	fw.flusher, _ = w.(http.Flusher)
	code, err := h.rt.Exec(r.Context(), id, req.Cmd, bytes.NewReader(stdin), fw.stream("stdout"), fw.stream("stderr"))
	if err != nil {
		fw.write(api.ExecFrame{Error: err.Error()})
		return
	}
	fw.write(api.ExecFrame{ExitCode: &code})
}

// frameWriter serialises exec output into NDJSON frames; stdout and stderr
// are written from different goroutines.
type frameWriter struct {
	mu      sync.Mutex
	w       io.Writer
	enc     *json.Encoder
	flusher http.Flusher
}

func (fw *frameWriter) write(f api.ExecFrame) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	_ = fw.enc.Encode(f)
	if fw.flusher != nil {
		fw.flusher.Flush()
	}
}

type streamWriter struct {
	fw   *frameWriter
	name string
}

func (fw *frameWriter) stream(name string) io.Writer { return streamWriter{fw, name} }

func (s streamWriter) Write(p []byte) (int, error) {
	s.fw.write(api.ExecFrame{Stream: s.name, Data: append([]byte(nil), p...)})
	return len(p), nil
}

// fail maps runtime errors to statuses the host turns into user messages.
func (h *handler) fail(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, docker.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, docker.ErrNotRunning), errors.Is(err, docker.ErrExists):
		status = http.StatusConflict
	case errors.Is(err, docker.ErrImageNotFound), errors.Is(err, docker.ErrNoUser), errors.Is(err, docker.ErrNoSSHD):
		status = http.StatusUnprocessableEntity
	case errors.Is(err, docker.ErrUnreachable):
		status = http.StatusServiceUnavailable
	}
	h.log.Warn("control request failed", "status", status, "err", err)
	writeJSON(w, status, errorBody{err.Error()})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, clusterauth.MaxBodySize))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{"bad request body: " + err.Error()})
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
