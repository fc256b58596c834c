package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPlayCast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.cast")
	cast := `{"version":2,"width":80,"height":24,"timestamp":1700000000}
[0.5,"o","hello "]
[0.6,"i","typed"]
[1.0,"r","100x30"]
[10.0,"o","world\r\n"]
`
	if err := os.WriteFile(path, []byte(cast), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	var slept []time.Duration
	if err := playCast(path, &out, 2, time.Second, func(d time.Duration) { slept = append(slept, d) }); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello world\r\n" {
		t.Fatalf("played %q: only output events, in order", out.String())
	}
	// 0.5 s at 2x = 250ms; 9.5 s at 2x capped at 1s.
	if len(slept) != 2 || slept[0] != 250*time.Millisecond || slept[1] != time.Second {
		t.Fatalf("pauses %v", slept)
	}
	info, err := readCastInfo(path)
	if err != nil || info.width != 80 || info.duration != 10*time.Second {
		t.Fatalf("info %+v %v", info, err)
	}
	bad := filepath.Join(t.TempDir(), "bad.cast")
	_ = os.WriteFile(bad, []byte("{\"version\":1}\n"), 0o600)
	if err := playCast(bad, &out, 1, time.Second, func(time.Duration) {}); err == nil || !strings.Contains(err.Error(), "asciicast v2") {
		t.Fatalf("bad file: %v", err)
	}
}
