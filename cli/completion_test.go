package cli

import (
	"strings"
	"testing"
)

func TestCompletionScript(t *testing.T) {
	t.Parallel()
	u := newUser(t)
	for _, sh := range []string{"bash", "zsh", "fish"} {
		r := u.mustRun("completion", sh)
		if !strings.Contains(r.stdout, "kohakuriver") || (sh != "fish" && !strings.Contains(r.stdout, "complete -C ")) {
			t.Errorf("%s: %s", sh, r)
		}
	}
	if r := u.run("completion", "powershell"); r.code != 2 {
		t.Fatal(r)
	}
}

// TestCompletionAnswers: the shell runs kohakuriver with COMP_LINE set and
// reads the candidates from stdout.
func TestCompletionAnswers(t *testing.T) {
	for _, tc := range []struct{ line, want, notWant string }{
		{"kohakuriver vp", "vps", "node"},
		{"kohakuriver vps ", "create", "login"},
		{"kohakuriver vps create --gen", "--gen-ssh-key", "--no-ssh-key"},
		{"kohakuriver ssh ", "config", "vps"},
	} {
		t.Setenv("COMP_LINE", tc.line)
		t.Setenv("COMP_POINT", itoa(len(tc.line)))
		r := newUser(t).run()
		if r.code != 0 || !strings.Contains(r.stdout, tc.want) || strings.Contains(r.stdout, tc.notWant) {
			t.Errorf("%q: want %q, not %q: %s", tc.line, tc.want, tc.notWant, r)
		}
	}
}
