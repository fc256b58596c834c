package api

import (
	"log/slog"
	"strings"
	"testing"
)

// testLogger logs at Debug into a buffer. At cleanup it fails the test if
// the log holds any of secrets() (tokens), and prints it if the test failed.
func testLogger(tb testing.TB, secrets func() []string) (*slog.Logger, *logBuffer) {
	lb := &logBuffer{}
	tb.Cleanup(func() {
		out := lb.String()
		for _, s := range secrets() {
			if strings.Contains(out, s) {
				tb.Errorf("log contains a secret token")
			}
		}
		if tb.Failed() {
			tb.Logf("server log:\n%s", out)
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}
