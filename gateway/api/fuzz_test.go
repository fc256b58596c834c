package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

// Fuzz targets for every decoder of client input. Seeds: the table tests
// (f.Add) and testdata/fuzz/<Target>/. Run one with, e.g.,
//
//	go test -run '^$' -fuzz FuzzCreateVPSRequest -fuzztime 30s ./gateway/api/

// serveAs runs one request through the server (no socket) as user.
func (e *env) serveAs(user, method, path, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if user != "" {
		req.Header.Set("Authorization", "Bearer "+e.tokens[user])
	}
	rec := httptest.NewRecorder()
	e.srv.ServeHTTP(rec, req)
	return rec
}

// checkAnswer fails on a 500 or an error answer that is not {"error":...},
// and on logs holding a token; it then drops the log so far.
func (e *env) checkAnswer(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	if rec.Code == http.StatusInternalServerError {
		t.Fatalf("500: %s", rec.Body)
	}
	if rec.Code >= 300 {
		var eb errorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error == "" {
			t.Fatalf("%d with a body that is not an error: %q", rec.Code, rec.Body)
		}
	}
	if logs := e.logs.String(); strings.Contains(logs, e.tokens["alice"]) {
		t.Fatal("token logged")
	}
	e.logs.reset()
}

// FuzzCreateVPSRequest: no body panics or yields a 500, and a record is
// created exactly when the answer is 201, which only a valid request gets.
func FuzzCreateVPSRequest(f *testing.F) {
	for _, tt := range createCases {
		f.Add(createBody(f, tt.body))
	}
	f.Add(`{"name":"ok","key_mode":"none","cores":2,"memory_mb":512,"image":"debian:12","login_user":"dev"}`)
	f.Add(createBody(f, `{"key_mode":"generated","public_keys":["KEY","KEY"]}`))
	e := newEnv(f)
	e.createVPS(f, "alice", "box")
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, body string) {
		before := e.countVPS(t)
		rec := e.serveAs("bob", "POST", "/api/v1/vps", body)
		e.checkAnswer(t, rec)
		after := e.countVPS(t)
		if rec.Code != http.StatusCreated {
			if after != before {
				t.Fatalf("%d but %d records were created", rec.Code, after-before)
			}
			return
		}
		if after != before+1 {
			t.Fatalf("201 but %d records were created", after-before)
		}
		var req CreateVPSRequest
		dec := json.NewDecoder(strings.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			t.Fatalf("201 for a body that does not decode: %v", err)
		}
		if _, err := e.srv.validateCreate(req); err != nil {
			t.Fatalf("201 for an invalid request: %v", err)
		}
		var v store.VPS
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil || v.Status != store.StatusRunning {
			t.Fatalf("201 with %q", rec.Body)
		}
		if err := e.st.DeleteVPS(ctx, v.TaskID); err != nil { // keep ports free
			t.Fatal(err)
		}
	})
}

// FuzzKeysRequest: adding keys never panics or 500s, changes the keys only
// on 200, and leaves only valid, distinct keys.
func FuzzKeysRequest(f *testing.F) {
	f.Add(createBody(f, `{"public_keys":["KEY"]}`))
	f.Add(createBody(f, `{"public_keys":["KEY","KEY"," KEY "]}`))
	f.Add(`{"public_keys":["ssh-rsa AAAA"]}`)
	f.Add(`{"public_keys":[]}`)
	f.Add(`{"public_keys":null,"x":1}`)
	e := newEnv(f)
	v := e.createVPS(f, "alice", "box")
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, body string) {
		before := e.vps(t, v.TaskID).Keys
		rec := e.serveAs("alice", "POST", "/api/v1/vps/box/keys", body)
		e.checkAnswer(t, rec)
		after := e.vps(t, v.TaskID)
		if rec.Code != http.StatusOK {
			if len(after.Keys) != len(before) {
				t.Fatalf("%d but keys changed", rec.Code)
			}
			return
		}
		seen := map[string]bool{}
		for _, k := range after.Keys {
			p, err := store.ParseAuthorizedKey(k.Line)
			if err != nil || p != k || seen[k.Fingerprint] {
				t.Fatalf("stored key %+v: %v (dup %v)", k, err, seen[k.Fingerprint])
			}
			seen[k.Fingerprint] = true
		}
		// Back to one key for the next input.
		if _, err := e.st.UpdateVPS(ctx, v.TaskID, func(x *store.VPS) error { x.Keys = x.Keys[:1]; return nil }); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzExecRequest: exec bodies never panic or 500; a 200 is a well-formed
// frame stream ending in the exit code.
func FuzzExecRequest(f *testing.F) {
	f.Add(`{"cmd":["echo","hi"]}`)
	f.Add(`{"cmd":["cat"],"stdin":"aGVsbG8="}`)
	f.Add(`{"cmd":[],"stdin":"!"}`)
	f.Add(`{"cmd":["a\u0000"]}`)
	f.Add(`{"cmd":"sh"}`)
	e := newEnv(f)
	e.createVPS(f, "alice", "box")
	e.agents.set(func(f *fakeAgents) {
		f.exec = func(ctx context.Context, cmd []string, stdin io.Reader, so, se io.Writer) (int, error) {
			io.WriteString(so, strings.Join(cmd, " "))
			if stdin != nil {
				io.Copy(se, stdin)
			}
			return 0, nil
		}
	})
	f.Fuzz(func(t *testing.T, body string) {
		rec := e.serveAs("alice", "POST", "/api/v1/vps/box/exec", body)
		e.checkAnswer(t, rec)
		if rec.Code != http.StatusOK {
			return
		}
		var req ExecRequest
		if err := json.Unmarshal([]byte(body), &req); err != nil {
			t.Fatalf("200 for a body that does not decode: %v", err)
		}
		stdin, err := validateExec(req)
		if err != nil {
			t.Fatalf("200 for an invalid request: %v", err)
		}
		var so, se bytes.Buffer
		code, err := ReadExecFrames(rec.Body, &so, &se)
		if err != nil || code != 0 || so.String() != strings.Join(req.Cmd, " ") || !bytes.Equal(se.Bytes(), stdin) {
			t.Fatalf("stream: code %d err %v stdout %q", code, err, so.String())
		}
	})
}

// FuzzAgentReport: agent reports (after the HMAC, which is not fuzzed
// here) never panic or 500, and leave every VPS in a known status.
func FuzzAgentReport(f *testing.F) {
	f.Add(`{"name":"n1","address":"10.0.0.1:8001","cores":4,"memory_mb":100,"vps":[]}`)
	f.Add(`{"name":"n1","address":"[::1]:8001","vps":[{"task_id":"TASK","running":true,"host_keys":["ssh-ed25519 AAAA"]}]}`)
	f.Add(`{"name":"n1","address":"h:1","vps":[{"task_id":"TASK","running":false},{"task_id":"x"}]}`)
	f.Add(`{"name":"","address":":"}`)
	e := newEnv(f)
	v := e.createVPS(f, "alice", "box")
	ctx := context.Background()
	register := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := e.srv.register(w, r); err != nil {
			e.srv.writeError(w, r, err)
		}
	})
	f.Fuzz(func(t *testing.T, body string) {
		body = strings.ReplaceAll(body, "TASK", v.TaskID)
		if _, err := e.st.UpdateVPS(ctx, v.TaskID, func(x *store.VPS) error { x.Status = store.StatusLost; return nil }); err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		register.ServeHTTP(rec, httptest.NewRequest("POST", "/api/v1/agent/register", strings.NewReader(body)))
		e.checkAnswer(t, rec)
		switch s := e.vps(t, v.TaskID).Status; s {
		case store.StatusLost, store.StatusRunning, store.StatusStopped:
		default:
			t.Fatalf("status %q after report", s)
		}
	})
}

// FuzzReadExecFrames: the client's decoder never panics, and reports an
// error exactly when it returns no exit code.
func FuzzReadExecFrames(f *testing.F) {
	f.Add(`{"stream":"stdout","data":"aGk="}` + "\n" + `{"exit_code":3}` + "\n")
	f.Add(`{"error":"x"}`)
	f.Add(`{"stream":"stderr","data":"!"}`)
	f.Add("\n\n{}\n")
	f.Fuzz(func(t *testing.T, in string) {
		code, err := ReadExecFrames(strings.NewReader(in), io.Discard, io.Discard)
		if err != nil && code != -1 {
			t.Fatalf("error %v with code %d", err, code)
		}
	})
}
