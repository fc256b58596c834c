package cli

import (
	"net/http"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

// lifecycleAPI answers every VPS call with a VPS in the state the call
// leads to.
func lifecycleAPI(t *testing.T) *fakeAPI {
	return newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		v := store.VPS{TaskID: testTaskID, Name: "web", Status: store.StatusRunning}
		switch {
		case r.Method == http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
			return
		case strings.HasSuffix(r.URL.Path, "/stop"):
			v.Status = store.StatusStopped
		case strings.HasSuffix(r.URL.Path, "/start"), strings.HasSuffix(r.URL.Path, "/restart"):
		default:
			writeAPIError(w, http.StatusNotFound, "unexpected")
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmd, call, out string
	}{
		{"stop", "POST /api/v1/vps/web/stop", "VPS web is stopped."},
		{"start", "POST /api/v1/vps/web/start", "VPS web is running."},
		{"restart", "POST /api/v1/vps/web/restart", "VPS web is running."},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			f := lifecycleAPI(t)
			u := newUser(t)
			u.saveAuth("tok", f.port(), 8002)
			r := u.mustRun("vps", tc.cmd, "web")
			if calls := f.calls(); len(calls) != 1 || calls[0] != tc.call || !strings.Contains(r.stdout, tc.out) {
				t.Fatalf("calls %v: %s", calls, r)
			}
		})
	}
}

func TestDeleteConfirmation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		terminal bool
		answer   string
		args     []string
		call     string // "" = nothing may be deleted
	}{
		{name: "terminal, no", terminal: true, answer: "n\n"},
		{name: "terminal, empty answer", terminal: true, answer: "\n"},
		{name: "terminal, yes", terminal: true, answer: "y\n", call: "DELETE /api/v1/vps/web"},
		{name: "terminal, -y", terminal: true, args: []string{"-y"}, call: "DELETE /api/v1/vps/web"},
		{name: "script: no prompt", call: "DELETE /api/v1/vps/web"},
		{name: "force", args: []string{"--force"}, call: "DELETE /api/v1/vps/web?force=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := lifecycleAPI(t)
			u := newUser(t)
			u.saveAuth("tok", f.port(), 8002)
			u.stdinTerminal, u.stdin = tc.terminal, tc.answer
			r := u.run(append([]string{"vps", "delete", "web"}, tc.args...)...)
			calls := f.calls()
			if tc.call == "" {
				if r.code != 1 || len(calls) != 0 || !strings.Contains(r.stderr, "not deleted") {
					t.Fatalf("calls %v: %s", calls, r)
				}
				return
			}
			if r.code != 0 || len(calls) != 1 || calls[0] != tc.call {
				t.Fatalf("calls %v: %s", calls, r)
			}
			if prompted := strings.Contains(r.stderr, "[y/N]"); prompted != (tc.terminal && tc.answer != "") {
				t.Errorf("prompted=%v: %s", prompted, r)
			}
		})
	}
}
