package gateway

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readCast(t *testing.T, path string) (map[string]any, [][]any) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var header map[string]any
	var events [][]any
	for sc.Scan() {
		if header == nil {
			if err := json.Unmarshal(sc.Bytes(), &header); err != nil {
				t.Fatalf("header: %v", err)
			}
			continue
		}
		var ev []any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || len(ev) != 3 {
			t.Fatalf("event %q: %v", sc.Text(), err)
		}
		events = append(events, ev)
	}
	return header, events
}

func castFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*", "*.cast"))
	return files
}

func TestSessionRecording(t *testing.T) {
	dir := t.TempDir()
	g := newTestGateway(t, func(c *Config) { c.Recording = RecordingConfig{Dir: dir, MaxBytes: 4096} })
	key := newUserKey(t)
	g.addVPS(t, "rec", 0, key)
	client := dialGo(t, g, key, "rec")

	// A command without a pty (like scp) is not recorded.
	sess, _ := client.NewSession()
	if out, err := sess.Output("echo plain"); err != nil || string(out) != "plain\n" {
		t.Fatalf("exec: %v %q", err, out)
	}
	if files := castFiles(t, dir); len(files) != 0 {
		t.Fatalf("non-pty session was recorded: %v", files)
	}

	// A terminal session is, with its size, a resize, input and output.
	sess, _ = client.NewSession()
	if err := sess.RequestPty("xterm", 30, 100, nil); err != nil {
		t.Fatal(err)
	}
	stdin, _ := sess.StdinPipe()
	var out strings.Builder
	sess.Stdout = &out
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	if err := sess.WindowChange(40, 120); err != nil {
		t.Fatal(err)
	}
	_, _ = stdin.Write([]byte("echo rec-$((6*7))\nexit\n"))
	_ = sess.Wait()
	files := castFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("want one recording, got %v", files)
	}
	if st, _ := os.Stat(files[0]); st.Mode().Perm() != 0o600 {
		t.Fatalf("recording mode %v, want 0600", st.Mode().Perm())
	}
	// The gateway closes the file when it tears the channel pair down,
	// just after the client saw the session end: poll for the events.
	var header map[string]any
	var sawInput, sawOutput, sawResize bool
	waitFor(t, "the recording's events", func() bool {
		var events [][]any
		header, events = readCast(t, files[0])
		sawInput, sawOutput, sawResize = false, false, false
		for _, ev := range events {
			data, _ := ev[2].(string)
			switch ev[1] {
			case "i":
				sawInput = sawInput || strings.Contains(data, "echo rec-")
			case "o":
				sawOutput = sawOutput || strings.Contains(data, "rec-42")
			case "r":
				sawResize = sawResize || data == "120x40"
			}
		}
		return sawInput && sawOutput && sawResize
	})
	if header["version"] != 2.0 || header["width"] != 100.0 || header["height"] != 30.0 {
		t.Fatalf("header %v", header)
	}

	// Past MaxBytes the recording stops with a note; the session goes on.
	sess, _ = client.NewSession()
	_ = sess.RequestPty("xterm", 24, 80, nil)
	var big strings.Builder
	sess.Stdout = &big
	if err := sess.Run("head -c 20000 /dev/zero | tr '\\0' x; echo; echo done"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(big.String(), "done") {
		t.Fatal("session output cut by the recording cap")
	}
	waitFor(t, "a capped recording", func() bool {
		for _, f := range castFiles(t, dir) {
			if b, _ := os.ReadFile(f); strings.Contains(string(b), "recording stopped") {
				if len(b) > 4096+200 {
					t.Fatalf("capped recording is %d bytes", len(b))
				}
				return true
			}
		}
		return false
	})
}
