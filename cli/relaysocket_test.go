package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/agent/relay"
)

func TestRelaySocketFlag(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if got := (AgentFlags{RelaySocket: "off"}).relaySocket("n1"); got != "" {
		t.Errorf("--relay-socket off = %q, want none", got)
	}
	if got := (AgentFlags{}).relaySocket("n1"); got != "/run/user/1000/kohakuriver/relay-n1.sock" {
		t.Errorf("default = %q", got)
	}
	if got := (AgentFlags{RelaySocket: "agent.sock"}).relaySocket("n1"); !filepath.IsAbs(got) || filepath.Base(got) != "agent.sock" {
		t.Errorf("a relative --relay-socket = %q, want it made absolute", got)
	}
	// Names are made safe for a file name and cut to fit a socket address.
	got := defaultRelaySocket("gpu/node 7" + strings.Repeat("x", 200))
	if !strings.HasPrefix(got, "/run/user/1000/kohakuriver/relay-gpu_node_7x") || !strings.HasSuffix(got, ".sock") {
		t.Errorf("long odd name: %q", got)
	}
	if err := relay.CheckSocketPath(got); err != nil {
		t.Errorf("default path for a long name is unusable: %v", err)
	}
}
