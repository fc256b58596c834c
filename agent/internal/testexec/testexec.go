// Package testexec helps tests run their own binary as another user (for
// the checks that depend on who the peer is: SO_PEERCRED, namespaces).
package testexec

import (
	"os"
	"path/filepath"
	"testing"
)

// CopyForOthers copies the running test binary into dir, mode 0755, and
// returns its path. The go tool builds test binaries in directories only
// their owner may enter, so a child running as another user cannot execute
// the original; dir must be one that user may enter.
func CopyForOthers(t testing.TB, dir string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, filepath.Base(exe))
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}
