package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// CompletionCmd prints the line that makes a shell complete kohakuriver's
// commands and flags. The shell then runs kohakuriver itself with
// COMP_LINE set; run answers that through kongplete.
type CompletionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"Shell: ${enum}."`
}

// Help is the detailed help.
func (CompletionCmd) Help() string {
	return `Examples:
  echo 'source <(kohakuriver completion bash)' >> ~/.bashrc
  echo 'source <(kohakuriver completion zsh)' >> ~/.zshrc
  kohakuriver completion fish > ~/.config/fish/completions/kohakuriver.fish`
}

// completionScripts are posener/complete's hooks, as kongplete installs
// them; ${bin} is this program's absolute path.
var completionScripts = map[string]string{
	"bash": "complete -C ${bin} kohakuriver\n",
	"zsh":  "autoload -U +X bashcompinit && bashcompinit\ncomplete -C ${bin} kohakuriver\n",
	"fish": `function __complete_kohakuriver
    set -lx COMP_LINE (commandline -cp)
    test -z (commandline -ct)
    and set COMP_LINE "$COMP_LINE "
    ${bin}
end
complete -f -c kohakuriver -a "(__complete_kohakuriver)"
`,
}

// Run prints the script.
func (c *CompletionCmd) Run(env *Env) error {
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this program's path: %w", err)
	}
	if abs, err := filepath.Abs(bin); err == nil {
		bin = abs
	}
	_, err = fmt.Fprint(env.Stdout, strings.ReplaceAll(completionScripts[c.Shell], "${bin}", shellQuote(bin)))
	return err
}
