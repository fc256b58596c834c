package docker

// Test harness for the tests that need Docker (docker_test.go).
//
// Assumptions:
//   - A Docker engine answers at DOCKER_HOST (default unix:///var/run/docker.sock)
//     and the test process may use it (root or the docker group).
//   - The image kohakuriver/vps:latest exists: `sudo bash testdata/vpsimage/build.sh`.
//     Nothing is pulled.
//   - Containers may publish ports on 127.0.0.1 and the test dials them.
//
// Without the engine or the image the tests skip, unless
// KOHAKURIVER_REQUIRE_DOCKER=1, when they fail. Every container and image
// they make carries the label io.kohakuriver.test=<run id>; each test removes
// its own in t.Cleanup and TestMain removes any left over.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	gossh "golang.org/x/crypto/ssh"
)

const testLabel = "io.kohakuriver.test"

// runID tells this run's containers apart from others on the engine.
var runID = func() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

func skipOrFatal(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("KOHAKURIVER_REQUIRE_DOCKER") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format+" (set KOHAKURIVER_REQUIRE_DOCKER=1 to fail instead)", args...)
}

// newTestRuntime returns a Runtime for node, closed at cleanup, or skips.
func newTestRuntime(t *testing.T, node string, opts ...func(*Options)) *Runtime {
	t.Helper()
	o := Options{
		NodeName: node,
		Logger:   slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range opts {
		f(&o)
	}
	rt, err := New(o)
	if err != nil {
		skipOrFatal(t, "docker: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	if _, err := rt.cli.ImageInspect(t.Context(), DefaultImage); err != nil {
		skipOrFatal(t, "image %s missing: build it with `sudo bash testdata/vpsimage/build.sh` (%v)", DefaultImage, err)
	}
	return rt
}

// testNode is the node name of this run's runtimes.
func testNode() string { return "test-node-" + runID }

// testTaskID returns a task id unique to this run.
func testTaskID(name string) string { return runID + "-" + name }

// createVPS creates a VPS labelled for this run and removes it at cleanup.
func createVPS(t *testing.T, rt *Runtime, spec Spec) Info {
	t.Helper()
	if spec.Labels == nil {
		spec.Labels = map[string]string{}
	}
	spec.Labels[testLabel] = runID
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := rt.Remove(ctx, spec.TaskID); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("cleanup: %v", err)
		}
	})
	start := time.Now()
	info, err := rt.Create(t.Context(), spec)
	if err != nil {
		t.Fatalf("Create(%s): %v", spec.TaskID, err)
	}
	t.Logf("created %s in %s: %s", spec.TaskID, time.Since(start).Round(time.Millisecond), info.SSHAddr)
	return info
}

// removeTestContainers removes whatever this run left behind, then exits
// with code (it is goleak's cleanup hook, which replaces os.Exit).
func removeTestContainers(code int) {
	defer os.Exit(code)
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := client.Filters{}.Add("label", testLabel+"="+runID)
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return
	}
	for _, c := range res.Items {
		fmt.Fprintf(os.Stderr, "removing leftover test container %s\n", c.Names)
		_, _ = cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	}
}

// newSigner returns a fresh ed25519 SSH key and its authorized_keys line.
func newSigner(t *testing.T) (gossh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, authorizedKey(s.PublicKey())
}

// userCert signs a user certificate for principal with ca, carrying the
// extensions the gateway will use, and returns a signer presenting it.
func userCert(t *testing.T, ca gossh.Signer, principal string) gossh.Signer {
	t.Helper()
	user, _ := newSigner(t)
	now := time.Now()
	cert := &gossh.Certificate{
		Key:             user.PublicKey(),
		CertType:        gossh.UserCert,
		KeyId:           "kohakuriver-test",
		ValidPrincipals: []string{principal},
		ValidAfter:      uint64(now.Add(-5 * time.Minute).Unix()),
		ValidBefore:     uint64(now.Add(time.Hour).Unix()),
		Permissions: gossh.Permissions{Extensions: map[string]string{
			"permit-pty": "", "permit-port-forwarding": "", "permit-agent-forwarding": "",
			"permit-X11-forwarding": "", "permit-user-rc": "",
		}},
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewCertSigner(cert, user)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dialSSH logs in to addr as user with signer, accepting only hostKey
// ("TYPE BASE64"). It closes the client at cleanup.
func dialSSH(t *testing.T, addr, user string, signer gossh.Signer, hostKey string) (*gossh.Client, error) {
	t.Helper()
	algo, _, _ := strings.Cut(hostKey, " ")
	cfg := &gossh.ClientConfig{
		User: user,
		Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		// Without this x/crypto prefers ECDSA/RSA host keys when offered.
		HostKeyAlgorithms: []string{algo},
		HostKeyCallback: func(_ string, _ net.Addr, k gossh.PublicKey) error {
			if got := authorizedKey(k); got != hostKey {
				return fmt.Errorf("host key %s, want %s", got, hostKey)
			}
			return nil
		},
		Timeout: 10 * time.Second,
	}
	c, err := gossh.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

// run runs cmd in a new session and returns its trimmed stdout.
func run(t *testing.T, c *gossh.Client, cmd string) string {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Output(cmd)
	if err != nil {
		t.Fatalf("%s: %v (output %q)", cmd, err, out)
	}
	return strings.TrimSpace(string(out))
}

// execOut runs cmd with Exec and returns trimmed stdout, failing the test
// on an error or a non-zero exit.
func execOut(t *testing.T, rt *Runtime, taskID string, cmd ...string) string {
	t.Helper()
	var stdout, stderr strings.Builder
	code, err := rt.Exec(t.Context(), taskID, cmd, nil, &stdout, &stderr)
	if err != nil || code != 0 {
		t.Fatalf("exec %q: code %d, err %v, stderr %q", cmd, code, err, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}
