package gateway

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unicode/utf8"

	gossh "golang.org/x/crypto/ssh"
)

// RecordingConfig turns on session recording: every terminal session (one
// with a pty) is written as an asciicast v2 file with output ("o"), input
// ("i") and resize ("r") events, playable by `asciinema play` and
// `kohakuriver recording play`. Sessions without a pty (scp, sftp, exec of
// a command) are not recorded: their data is files, not a screen.
type RecordingConfig struct {
	// Dir receives the recordings as DIR/YYYY-MM-DD/<conn id>-<n>.cast.
	// Empty disables recording.
	Dir string
	// MaxBytes caps one recording (default 64 MiB); past it the file ends
	// with a note and the session goes on unrecorded.
	MaxBytes int64
}

// recording is one session's asciicast file. It is created lazily when the
// client asks for a pty (which carries the terminal size the header needs)
// and dropped if the session starts without one.
type recording struct {
	cfg  RecordingConfig
	path string
	log  func(msg string, args ...any)

	mu       sync.Mutex
	f        *os.File
	w        *bufio.Writer
	start    time.Time
	written  int64
	disabled bool // no pty, capped, or an I/O error: stop recording
	// held is, per stream ("i" and "o"), the start of a UTF-8 character
	// that the last chunk ended in the middle of. Events are JSON strings,
	// and encoding/json would turn each half into U+FFFD, so the bytes wait
	// for the rest of the character in the next chunk (or for close).
	heldIn, heldOut []byte
}

// newRecording prepares a recording for a session of c, or returns nil when
// recording is off.
func (s *Server) newRecording(c *conn) *recording {
	cfg := s.cfg.Recording
	if cfg.Dir == "" {
		return nil
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 64 << 20
	}
	n := c.recordings.Add(1)
	// Only the conn id (hex) and a counter form the name: nothing the
	// client chose reaches the path.
	name := fmt.Sprintf("%s-%d.cast", c.id, n)
	day := time.Now().UTC().Format("2006-01-02")
	return &recording{cfg: cfg, path: filepath.Join(cfg.Dir, day, name), log: c.log.Warn}
}

// observe watches the client's requests: pty-req opens the file,
// window-change adds a resize event, and a shell/exec/subsystem without a
// pty cancels the recording.
func (r *recording) observe(req *gossh.Request) {
	switch req.Type {
	case "pty-req":
		var p struct {
			Term          string
			Columns, Rows uint32
			Width, Height uint32
			Modes         string
		}
		if gossh.Unmarshal(req.Payload, &p) == nil {
			r.open(p.Columns, p.Rows, p.Term)
		}
	case "window-change":
		var p struct{ Columns, Rows, Width, Height uint32 }
		if gossh.Unmarshal(req.Payload, &p) == nil {
			r.event("r", fmt.Sprintf("%dx%d", p.Columns, p.Rows))
		}
	case "shell", "exec", "subsystem":
		r.mu.Lock()
		if r.f == nil {
			r.disabled = true
		}
		r.mu.Unlock()
	}
}

func (r *recording) open(cols, rows uint32, term string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil || r.disabled {
		return
	}
	if err := os.MkdirAll(filepath.Dir(r.path), 0o700); err != nil {
		r.fail(err)
		return
	}
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		r.fail(err)
		return
	}
	r.f, r.w, r.start = f, bufio.NewWriter(f), time.Now()
	header := map[string]any{
		"version": 2, "width": cols, "height": rows, "timestamp": r.start.Unix(),
		"env": map[string]string{"TERM": printable(term)},
	}
	b, _ := json.Marshal(header)
	r.write(append(b, '\n'))
}

// event appends one [time, kind, data] line. Callers hold no lock.
func (r *recording) event(kind, data string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.eventLocked(kind, data)
}

// eventLocked is event for callers holding r.mu.
func (r *recording) eventLocked(kind, data string) {
	if r.f == nil || r.disabled {
		return
	}
	b, _ := json.Marshal([]any{float64(time.Since(r.start).Microseconds()) / 1e6, kind, data})
	if r.written+int64(len(b))+1 > r.cfg.MaxBytes {
		note, _ := json.Marshal([]any{float64(time.Since(r.start).Microseconds()) / 1e6, "o",
			fmt.Sprintf("\r\n[kohakuriver: recording stopped at %d bytes]\r\n", r.cfg.MaxBytes)})
		r.write(append(note, '\n'))
		r.disabled = true
		return
	}
	r.write(append(b, '\n'))
}

func (r *recording) write(b []byte) {
	n, err := r.w.Write(b)
	r.written += int64(n)
	if err != nil {
		r.fail(err)
	}
}

func (r *recording) fail(err error) {
	r.disabled = true
	r.log("session recording stopped", "path", r.path, "err", err)
}

// streamWriter turns relayed bytes into events of one kind. The relay
// reads in chunks that can end inside a multi-byte UTF-8 character: the
// incomplete tail is held back and prepended to the stream's next chunk.
// Write never blocks beyond the recording's lock and never fails.
type streamWriter struct {
	r    *recording
	kind string
}

func (w streamWriter) Write(p []byte) (int, error) {
	r := w.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil || r.disabled {
		return len(p), nil
	}
	held := r.heldFor(w.kind)
	buf := p
	if len(*held) > 0 {
		buf = append(*held, p...)
	}
	n := len(buf) - incompleteTail(buf)
	if n > 0 {
		r.eventLocked(w.kind, string(buf[:n]))
	}
	// Copy: neither p (the relay's buffer) nor buf may be kept.
	*held = append((*held)[:0:0], buf[n:]...)
	return len(p), nil
}

func (r *recording) heldFor(kind string) *[]byte {
	if kind == "i" {
		return &r.heldIn
	}
	return &r.heldOut
}

// incompleteTail returns how many bytes at the end of b are the start of
// a UTF-8 character whose remaining bytes have not arrived yet (0 to
// utf8.UTFMax-1). Invalid sequences are not held: they count as complete.
func incompleteTail(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-(utf8.UTFMax-1); i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return len(b) - i
			}
			return 0
		}
	}
	return 0
}

func (r *recording) input() io.Writer  { return streamWriter{r, "i"} }
func (r *recording) output() io.Writer { return streamWriter{r, "o"} }

// close flushes and closes the file.
func (r *recording) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return
	}
	// A stream that ended inside a character: record its bytes as they
	// are (encoding/json shows them as U+FFFD) rather than drop them.
	for _, kind := range []string{"i", "o"} {
		if held := r.heldFor(kind); len(*held) > 0 {
			r.eventLocked(kind, string(*held))
			*held = nil
		}
	}
	if err := r.w.Flush(); err != nil {
		r.log("session recording not flushed", "path", r.path, "err", err)
	}
	r.f.Close()
	r.f = nil
	r.disabled = true
}
