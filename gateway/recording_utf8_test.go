package gateway

import (
	"path/filepath"
	"strings"
	"testing"
)

// recordChunks records chunks on one stream of a fresh recording and
// returns the concatenated text of that stream's events as read back.
func recordChunks(t *testing.T, kind string, chunks ...string) string {
	t.Helper()
	dir := t.TempDir()
	r := &recording{
		cfg:  RecordingConfig{Dir: dir, MaxBytes: 1 << 20},
		path: filepath.Join(dir, "day", "x-1.cast"),
		log:  func(msg string, args ...any) { t.Errorf("%s %v", msg, args) },
	}
	r.open(80, 24, "xterm")
	w := r.output()
	if kind == "i" {
		w = r.input()
	}
	for _, c := range chunks {
		if n, err := w.Write([]byte(c)); n != len(c) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", c, n, err)
		}
	}
	r.close()
	_, events := readCast(t, r.path)
	var got strings.Builder
	for _, ev := range events {
		if ev[1] != kind {
			t.Fatalf("unexpected event %v", ev)
		}
		s, _ := ev[2].(string)
		if s == "" {
			t.Fatalf("empty event %v", ev)
		}
		got.WriteString(s)
	}
	return got.String()
}

func TestRecordingUTF8SplitAcrossWrites(t *testing.T) {
	const text = "héllo 世界 ┌─┐ 🙂!"
	for _, kind := range []string{"i", "o"} {
		for i := 0; i <= len(text); i++ {
			got := recordChunks(t, kind, text[:i], text[i:])
			if got != text {
				t.Fatalf("%s split at %d: recorded %q, want %q", kind, i, got, text)
			}
		}
	}
	// One byte per write: a 4-byte character spans four writes.
	var bytes []string
	for i := 0; i < len(text); i++ {
		bytes = append(bytes, text[i:i+1])
	}
	if got := recordChunks(t, "o", bytes...); got != text {
		t.Fatalf("byte-by-byte: recorded %q, want %q", got, text)
	}
}

func TestRecordingUTF8StreamEndsMidCharacter(t *testing.T) {
	// "世" is e4 b8 96: the stream ends after two of its bytes. The held
	// bytes are flushed at close (encoding/json shows each as U+FFFD),
	// not lost.
	got := recordChunks(t, "o", "ab", "c\xe4", "\xb8")
	if want := "abc\uFFFD\uFFFD"; got != want {
		t.Fatalf("recorded %q, want %q with the held bytes flushed", got, want)
	}
	// Invalid bytes mid-chunk are recorded (replaced) and held bytes do
	// not swallow the text after them.
	got = recordChunks(t, "o", "x\xffy\xe4", "\xb8\x96z")
	if want := "x\uFFFDy世z"; got != want {
		t.Fatalf("recorded %q, want %q", got, want)
	}
}
