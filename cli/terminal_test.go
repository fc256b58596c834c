package cli

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/gateway/api"
)

// execAPI answers exec with the command line on stdout, the stdin it got
// on stderr, and exit code 7.
func execAPI(t *testing.T) *fakeAPI {
	return newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		var req api.ExecRequest
		if r.URL.Path != "/api/v1/vps/web/exec" || json.NewDecoder(r.Body).Decode(&req) != nil {
			writeAPIError(w, http.StatusNotFound, "unexpected")
			return
		}
		in, _ := base64.StdEncoding.DecodeString(req.Stdin)
		code := 7
		for _, f := range []api.ExecFrame{
			{Stream: "stdout", Data: []byte(strings.Join(req.Cmd, "|"))},
			{Stream: "stderr", Data: []byte("stdin=" + string(in))},
			{ExitCode: &code},
		} {
			b, _ := json.Marshal(f)
			w.Write(append(b, '\n'))
		}
	})
}

func TestTerminalExec(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		args       []string
		stdin      string
		terminal   bool
		wantStdout string
		wantStderr string
	}{
		{"after --", []string{"--", "sh", "-c", "echo hi"}, "", false, "sh|-c|echo hi", "stdin="},
		{"without --", []string{"ls", "-la", "/"}, "", false, "ls|-la|/", "stdin="},
		{"stdin sent", []string{"--", "cat"}, "data\n", false, "cat", "stdin=data\n"},
		{"terminal stdin not read", []string{"--", "cat"}, "typed", true, "cat", "stdin="},
		{"-n", []string{"-n", "--", "cat"}, "data", false, "cat", "stdin="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := execAPI(t)
			u := newUser(t)
			u.saveAuth("tok", f.port(), 8002)
			u.stdin, u.stdinTerminal = tc.stdin, tc.terminal
			r := u.run(append([]string{"terminal", "exec", "web"}, tc.args...)...)
			if r.code != 7 || r.stdout != tc.wantStdout || r.stderr != tc.wantStderr {
				t.Fatalf("want exit 7, stdout %q, stderr %q; got %s", tc.wantStdout, tc.wantStderr, r)
			}
		})
	}
	f := execAPI(t)
	u := newUser(t)
	u.saveAuth("tok", f.port(), 8002)
	if r := u.run("terminal", "exec", "web", "--"); r.code != 1 || !strings.Contains(r.stderr, "no command given") || len(f.calls()) != 0 {
		t.Fatal(r)
	}
}
