package api

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// signalWriter signals on first when it is first written to.
type signalWriter struct {
	bytes.Buffer
	once  sync.Once
	first chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.first) })
	return w.Buffer.Write(p)
}

func TestExecStreams(t *testing.T) {
	e := newEnv(t)
	e.createVPS(t, "alice", "box")
	big := bytes.Repeat([]byte("0123456789abcdef"), 10<<10) // 160 KiB: several frames
	stdout := &signalWriter{first: make(chan struct{})}
	type call struct {
		cmd   []string
		stdin []byte
	}
	calls := make(chan call, 1) // what the node got, handed to the test goroutine
	e.agents.set(func(f *fakeAgents) {
		f.exec = func(ctx context.Context, cmd []string, stdin io.Reader, so, se io.Writer) (int, error) {
			in, _ := io.ReadAll(stdin)
			calls <- call{cmd, in}
			io.WriteString(so, "first\n")
			// Output is streamed: the client has this frame before the
			// command goes on (else this waits for the timeout).
			select {
			case <-stdout.first:
			case <-time.After(5 * time.Second):
				return -1, errors.New("first frame was not flushed")
			}
			var wg sync.WaitGroup // the agent may write both streams at once
			wg.Go(func() {
				for range 50 {
					io.WriteString(se, "warn\n")
				}
			})
			so.Write(big)
			wg.Wait()
			so.Write(in)
			return 3, nil
		}
	})
	var stderr bytes.Buffer
	code, err := e.client("alice").Exec(context.Background(), "box", []string{"sh", "-c", "cat; exit 3"},
		strings.NewReader("from stdin"), stdout, &stderr)
	if err != nil || code != 3 {
		t.Fatalf("Exec = %d, %v; want 3", code, err)
	}
	want := "first\n" + string(big) + "from stdin"
	if stdout.String() != want {
		t.Fatalf("stdout: %d bytes, want %d", stdout.Len(), len(want))
	}
	if stderr.String() != strings.Repeat("warn\n", 50) {
		t.Fatalf("stderr = %q", stderr.String())
	}
	if got := <-calls; strings.Join(got.cmd, " ") != "sh -c cat; exit 3" || string(got.stdin) != "from stdin" {
		t.Fatalf("node got cmd %q stdin %q", got.cmd, got.stdin)
	}
	if strings.Contains(e.logs.String(), "exit 3") {
		t.Fatal("exec arguments were logged")
	}
}

func TestExecErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.client("alice")
	e.createVPS(t, "alice", "box")

	// Failure after output: an error frame.
	e.agents.set(func(f *fakeAgents) {
		f.exec = func(ctx context.Context, cmd []string, stdin io.Reader, so, se io.Writer) (int, error) {
			io.WriteString(so, "partial")
			return -1, errors.New("container vanished")
		}
	})
	var out bytes.Buffer
	_, err := c.Exec(ctx, "box", []string{"true"}, nil, &out, nil)
	if !errors.Is(err, ErrExecFailed) || !strings.Contains(err.Error(), "container vanished") || out.String() != "partial" {
		t.Fatalf("mid-stream failure: %v, stdout %q", err, out.String())
	}

	// Failure before output: an ordinary error answer.
	e.agents.set(func(f *fakeAgents) { f.fail["exec"] = errors.New("connection refused") })
	if _, err := c.Exec(ctx, "box", []string{"true"}, nil, nil, nil); StatusOf(err) != http.StatusBadGateway {
		t.Fatalf("node down: %v, want 502", err)
	}
	e.agents.set(func(f *fakeAgents) { delete(f.fail, "exec") })

	tests := []struct {
		name, body string
		status     int
	}{
		{"empty cmd", `{"cmd":[]}`, 400},
		{"empty program", `{"cmd":[""]}`, 400},
		{"nul byte", `{"cmd":["a\u0000b"]}`, 400},
		{"bad stdin", `{"cmd":["cat"],"stdin":"***"}`, 400},
		{"unknown field", `{"cmd":["id"],"tty":true}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if status, body := e.do(t, "alice", "POST", "/api/v1/vps/box/exec", tt.body); status != tt.status {
				t.Fatalf("%d %s, want %d", status, body, tt.status)
			}
		})
	}
	if _, err := c.Exec(ctx, "box", []string{"cat"}, bytes.NewReader(make([]byte, MaxExecStdin+1)), nil, nil); err == nil {
		t.Fatal("oversized stdin accepted")
	}

	if _, err := c.StopVPS(ctx, "box"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "box", []string{"true"}, nil, nil, nil); StatusOf(err) != http.StatusConflict {
		t.Fatalf("exec in stopped VPS: %v, want 409", err)
	}
}

// TestExecClientGone: the command's context ends when the client leaves.
func TestExecClientGone(t *testing.T) {
	e := newEnv(t)
	e.createVPS(t, "alice", "box")
	cancelled := make(chan struct{})
	started := &signalWriter{first: make(chan struct{})}
	e.agents.set(func(f *fakeAgents) {
		f.exec = func(ctx context.Context, cmd []string, stdin io.Reader, so, se io.Writer) (int, error) {
			io.WriteString(so, "running")
			<-ctx.Done()
			close(cancelled)
			return -1, ctx.Err()
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := e.client("alice").Exec(ctx, "box", []string{"sleep", "inf"}, nil, started, nil)
		done <- err
	}()
	<-started.first
	cancel()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the node's exec was not cancelled")
	}
	if err := <-done; err == nil {
		t.Fatal("Exec returned no error after cancel")
	}
}

func TestReadExecFrames(t *testing.T) {
	tests := []struct {
		name           string
		in             string
		code           int
		stdout, stderr string
		err            error
	}{
		{"exit", `{"stream":"stdout","data":"aGk="}` + "\n" + `{"stream":"stderr","data":"eW8="}` + "\n" + `{"exit_code":7}` + "\n", 7, "hi", "yo", nil},
		{"exit 0 only", `{"exit_code":0}`, 0, "", "", nil},
		{"blank lines", "\n\n" + `{"exit_code":1}` + "\n\n", 1, "", "", nil},
		{"unknown stream skipped", `{"stream":"tty","data":"aGk="}` + "\n" + `{"exit_code":0}`, 0, "", "", nil},
		{"error frame", `{"stream":"stdout","data":"aGk="}` + "\n" + `{"error":"node n1 could not run the command: boom"}`, -1, "hi", "", ErrExecFailed},
		{"no final frame", `{"stream":"stdout","data":"aGk="}` + "\n", -1, "hi", "", ErrExecIncomplete},
		{"empty", ``, -1, "", "", ErrExecIncomplete},
		{"malformed", `{"stream":`, -1, "", "", ErrExecIncomplete},
		{"bad base64", `{"stream":"stdout","data":"!!"}`, -1, "", "", ErrExecIncomplete},
		{"line too long", `{"stream":"stdout","data":"` + strings.Repeat("A", maxFrameLine) + `"}`, -1, "", "", ErrExecIncomplete},
		{"stops at exit", `{"exit_code":2}` + "\n" + `{"stream":"stdout","data":"aGk="}`, 2, "", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var so, se bytes.Buffer
			code, err := ReadExecFrames(strings.NewReader(tt.in), &so, &se)
			if code != tt.code || !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("= %d, %v; want %d, %v", code, err, tt.code, tt.err)
			}
			if so.String() != tt.stdout || se.String() != tt.stderr {
				t.Fatalf("stdout %q stderr %q", so.String(), se.String())
			}
		})
	}
	// nil writers discard.
	if code, err := ReadExecFrames(strings.NewReader(tests[0].in), nil, nil); code != 7 || err != nil {
		t.Fatalf("nil writers: %d, %v", code, err)
	}
}
