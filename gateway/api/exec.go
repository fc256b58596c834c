package api

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/kohakuriver/kohakuriver/store"
)

// Exec limits.
const (
	maxExecArgs = 4096
	// maxFrameData is the most output bytes in one frame; with base64 and
	// JSON a frame line stays far below maxFrameLine.
	maxFrameData = 32 << 10
	// maxFrameLine bounds one NDJSON line ReadExecFrames accepts.
	maxFrameLine = 1 << 20
	// MaxExecStdin is the most stdin Client.Exec sends: it travels base64
	// in one request body of at most MaxBodySize.
	MaxExecStdin = 512 << 10
)

// POST /api/v1/vps/{ref}/exec
//
// The answer is NDJSON: ExecFrame lines with output as it comes, flushed
// one by one, then one line with exit_code, or with error if the command
// could not finish. Until the first line is written a failure is an
// ordinary error answer (404, 409, 502, 503...), so a client can tell "the
// node is down" from "the command failed". The command ends when the
// client disconnects (its context is the request's).
func (srv *Server) exec(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	v, err := srv.lookupVPS(ctx, userFrom(ctx), r.PathValue("ref"))
	if err != nil {
		return err
	}
	var req ExecRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	stdin, err := validateExec(req)
	if err != nil {
		return err
	}
	node, err := srv.onlineNode(ctx, v)
	if err != nil {
		return err
	}
	if v.Status != store.StatusRunning {
		return errorf(http.StatusConflict, "VPS %s is %s; start it first with `kohakuriver vps start %s`", v.Ref(), v.Status, v.Ref())
	}
	// Arguments may hold secrets: log the program name only.
	log := info(r).log.With("vps", v.TaskID, "node", node.Name)
	log.Info("vps exec", "program", req.Cmd[0], "args", len(req.Cmd)-1)
	var in io.Reader
	if len(stdin) > 0 {
		in = bytes.NewReader(stdin)
	}
	fw := &frameWriter{w: w, rc: http.NewResponseController(w)}
	code, err := srv.agents.Exec(ctx, node, v.TaskID, req.Cmd, in, fw.stream("stdout"), fw.stream("stderr"))
	if err != nil {
		he := nodeError(node.Name, "run the command", err, "")
		if !fw.begun() {
			return he
		}
		info(r).err = err
		_ = fw.write(ExecFrame{Error: he.msg}) // the client may be gone
		return nil
	}
	_ = fw.write(ExecFrame{ExitCode: &code})
	return nil
}

// validateExec checks req and returns the decoded stdin.
func validateExec(req ExecRequest) ([]byte, error) {
	if len(req.Cmd) == 0 || req.Cmd[0] == "" {
		return nil, errorf(http.StatusBadRequest, `cmd is empty; give the program and its arguments, e.g. ["uname", "-a"]`)
	}
	if len(req.Cmd) > maxExecArgs {
		return nil, errorf(http.StatusBadRequest, "cmd has more than %d arguments", maxExecArgs)
	}
	for i, a := range req.Cmd {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, errorf(http.StatusBadRequest, "cmd[%d] contains a NUL byte, which no program can receive", i)
		}
	}
	stdin, err := base64.StdEncoding.DecodeString(req.Stdin)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "stdin must be base64 (standard encoding, with padding)")
	}
	return stdin, nil
}

// frameWriter writes exec frames to the response, one JSON line each, and
// flushes each. The NodeAgent may write stdout and stderr from different
// goroutines, hence the mutex; after a write error (the client left) every
// write fails.
type frameWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController

	mu    sync.Mutex
	began bool // the 200 and at least one frame were written
	err   error
}

func (fw *frameWriter) begun() bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.began
}

func (fw *frameWriter) write(f ExecFrame) error {
	line, err := json.Marshal(f)
	if err != nil {
		return err // cannot happen: ExecFrame has only plain fields
	}
	line = append(line, '\n')
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.err != nil {
		return fw.err
	}
	if !fw.began {
		h := fw.w.Header()
		h.Set("Content-Type", "application/x-ndjson")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		fw.w.WriteHeader(http.StatusOK)
		fw.began = true
	}
	if _, err := fw.w.Write(line); err != nil {
		fw.err = err
		return err
	}
	if err := fw.rc.Flush(); err != nil {
		fw.err = err
		return err
	}
	return nil
}

// stream returns an io.Writer that sends what it is given as frames of
// stream name, at most maxFrameData bytes each.
func (fw *frameWriter) stream(name string) io.Writer {
	return streamWriter{fw: fw, name: name}
}

type streamWriter struct {
	fw   *frameWriter
	name string
}

func (s streamWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxFrameData)]
		if err := s.fw.write(ExecFrame{Stream: s.name, Data: chunk}); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// ReadExecFrames reads an exec answer (NDJSON ExecFrames), copying output
// to stdout and stderr (nil discards), until the final frame. It returns
// the exit code, or an error wrapping ErrExecFailed (the host's error
// frame) or ErrExecIncomplete (the stream ended or broke first). Frames of
// unknown streams are skipped, for forward compatibility.
func ReadExecFrames(r io.Reader, stdout, stderr io.Writer) (int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxFrameLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var f ExecFrame
		if err := json.Unmarshal(line, &f); err != nil {
			return -1, fmt.Errorf("%w: malformed frame: %v", ErrExecIncomplete, err)
		}
		switch {
		case f.Error != "":
			return -1, fmt.Errorf("%w: %s", ErrExecFailed, f.Error)
		case f.ExitCode != nil:
			return *f.ExitCode, nil
		}
		var dst io.Writer
		switch f.Stream {
		case "stdout":
			dst = stdout
		case "stderr":
			dst = stderr
		}
		if dst != nil && len(f.Data) > 0 {
			if _, err := dst.Write(f.Data); err != nil {
				return -1, fmt.Errorf("exec: write %s: %w", f.Stream, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return -1, fmt.Errorf("%w: %v", ErrExecIncomplete, err)
	}
	return -1, ErrExecIncomplete
}
