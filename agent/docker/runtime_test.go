package docker

import (
	"errors"
	"strings"
	"testing"

	"github.com/moby/moby/client"
)

func TestNewUnreachable(t *testing.T) {
	_, err := New(Options{
		NodeName:   "n",
		ClientOpts: []client.Opt{client.WithHost("unix://" + t.TempDir() + "/no-docker.sock")},
	})
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("New = %v, want ErrUnreachable", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "no-docker.sock: is dockerd running?") {
		t.Errorf("message %q does not name the host and the fix", msg)
	}
	t.Log(err)
}

func TestNewNeedsNodeName(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without NodeName succeeded")
	}
}
