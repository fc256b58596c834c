package cli

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestReexecForHost: the host restarts itself once with madvdontneed=0 in
// GODEBUG (one GODEBUG entry, the rest of the environment kept), leaves an
// operator's madvdontneed alone, and runs on with a warning when it cannot
// restart.
func TestReexecForHost(t *testing.T) {
	t.Setenv("GODEBUG", "gctrace=0")
	t.Setenv("KOHAKURIVER_REEXEC_TEST", "kept")
	run := func(godebug string, execErr error) (calls [][]string, stderr string) {
		var errb bytes.Buffer
		env := &Env{
			Stderr: &errb,
			Getenv: func(k string) string {
				if k == "GODEBUG" {
					return godebug
				}
				return ""
			},
			Reexec: func(environ []string) error {
				calls = append(calls, environ)
				return execErr
			},
		}
		reexecForHost(env)
		return calls, errb.String()
	}

	calls, stderr := run("gctrace=0", errors.New("exec refused"))
	if len(calls) != 1 {
		t.Fatalf("Reexec called %d times; want once", len(calls))
	}
	var godebugs []string
	for _, kv := range calls[0] {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebugs = append(godebugs, v)
		}
	}
	if !slices.Equal(godebugs, []string{"gctrace=0,madvdontneed=0"}) {
		t.Errorf("GODEBUG entries in the new environment: %q; want one, gctrace=0,madvdontneed=0", godebugs)
	}
	if !slices.Contains(calls[0], "KOHAKURIVER_REEXEC_TEST=kept") {
		t.Error("the rest of the environment was not passed on")
	}
	if !strings.Contains(stderr, "warning: could not restart with GODEBUG=gctrace=0,madvdontneed=0 (exec refused)") {
		t.Errorf("stderr after a failed exec: %q", stderr)
	}

	if calls, stderr := run("madvdontneed=1", nil); len(calls) != 0 || stderr != "" {
		t.Errorf("an operator's madvdontneed=1: Reexec called %d times, stderr %q; want neither", len(calls), stderr)
	}
	// Tests run commands in their own process: no Reexec, nothing happens.
	reexecForHost(&Env{Getenv: func(string) string { return "" }})
}
