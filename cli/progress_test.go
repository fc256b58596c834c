package cli

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestWait(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	for _, tc := range []struct {
		name     string
		terminal bool
		want     func(string) bool
	}{
		{"terminal: spinner, then erased", true, func(s string) bool {
			return strings.HasPrefix(s, "\r| Creating... 0s ") && strings.Count(s, "\r") >= 3 && strings.HasSuffix(s, "\r\x1b[K")
		}},
		{"no terminal: one plain line", false, func(s string) bool { return s == "Creating...\n" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr syncBuffer
			env := &Env{Stderr: &stderr, StderrTerminal: tc.terminal}
			env.fill()
			err := env.wait("Creating", func() error { time.Sleep(400 * time.Millisecond); return boom })
			if !errors.Is(err, boom) {
				t.Fatalf("err %v", err)
			}
			// The spinner has stopped: nothing more is written.
			before := stderr.String()
			time.Sleep(300 * time.Millisecond)
			if got := stderr.String(); got != before || !tc.want(got) {
				t.Fatalf("stderr %q", got)
			}
		})
	}
}
