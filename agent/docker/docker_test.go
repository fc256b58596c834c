package docker

// Tests against a real Docker engine. See harness_test.go for what they
// assume and how they skip.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	gossh "golang.org/x/crypto/ssh"
)

func TestCreateAndConnect(t *testing.T) {
	t.Parallel()
	rt := newTestRuntime(t, testNode())
	userKey, userLine := newSigner(t)
	ca, caLine := newSigner(t)
	id := testTaskID("connect")
	info := createVPS(t, rt, Spec{
		TaskID:         id,
		Cores:          1,
		MemoryMB:       256,
		AuthorizedKeys: []string{userLine + " test-user", "cert-authority " + caLine + " test-ca"},
	})

	// Port 22 is published on loopback only (the fallback), and the relay
	// dials the container's own address, which this machine reaches.
	c, err := rt.inspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	published, err := publishedSSHAddr(c)
	if err != nil || !strings.HasPrefix(published, "127.0.0.1:") {
		t.Errorf("published at %q (%v), want 127.0.0.1:<port>", published, err)
	}
	own, ok := networkSSHAddr(c)
	if !ok || info.SSHAddr != own || !strings.HasSuffix(own, ":22") {
		t.Errorf("SSHAddr = %q, want the container's network address %q (found: %v)", info.SSHAddr, own, ok)
	}
	if rt.networkReach.Load() != reachYes {
		t.Errorf("container networks not recorded as reachable (%d)", rt.networkReach.Load())
	}
	if len(info.HostKeys) != 1 || !strings.HasPrefix(info.HostKeys[0], "ssh-ed25519 ") {
		t.Fatalf("HostKeys = %q, want one ed25519 key", info.HostKeys)
	}
	t.Run("sshd on the container's loopback", func(t *testing.T) {
		testNamespaceTarget(t, rt, id, c, userKey, info.HostKeys[0])
	})
	if info.State != StateRunning || info.TaskID != id || info.ContainerID == "" {
		t.Errorf("Info = %+v", info)
	}
	if info.Labels[testLabel] != runID || info.Labels["io.kohakuriver.node"] != testNode() || info.Labels["io.kohakuriver.managed"] != "true" {
		t.Errorf("labels = %v", info.Labels)
	}

	for _, tt := range []struct {
		name   string
		signer gossh.Signer
	}{
		{"plain key", userKey},
		{"user certificate", userCert(t, ca, "root")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// dialSSH accepts only info.HostKeys[0]: the key the client
			// sees must be the one Create reported.
			c, err := dialSSH(t, info.SSHAddr, "root", tt.signer, info.HostKeys[0])
			if err != nil {
				t.Fatal(err)
			}
			host, file := run(t, c, "hostname"), run(t, c, "cat /etc/hostname")
			if host == "" || host != file {
				t.Errorf("hostname %q, /etc/hostname %q", host, file)
			}
		})
	}
	t.Run("certificate for another principal", func(t *testing.T) {
		if _, err := dialSSH(t, info.SSHAddr, "root", userCert(t, ca, "alice"), info.HostKeys[0]); err == nil {
			t.Fatal("login with a certificate for alice as root succeeded")
		}
	})

	got := execOut(t, rt, id, "stat", "-c", "%n %a %U %G", "/root/.ssh", "/root/.ssh/authorized_keys", "/etc/ssh/ssh_host_ed25519_key")
	want := "/root/.ssh 700 root root\n/root/.ssh/authorized_keys 600 root root\n/etc/ssh/ssh_host_ed25519_key 600 root root"
	if got != want {
		t.Errorf("modes:\n%s\nwant:\n%s", got, want)
	}
	if got := execOut(t, rt, id, "ls", "/etc/ssh"); strings.Contains(got, "rsa") || strings.Contains(got, "ecdsa") {
		t.Errorf("unexpected host keys in the image: %s", got)
	}

	// Re-adoption: a new runtime of the same node finds the VPS as it is.
	rt2 := newTestRuntime(t, testNode())
	list, err := rt2.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var found *Info
	for i := range list {
		if list[i].TaskID == id {
			found = &list[i]
		}
	}
	if found == nil {
		t.Fatalf("List does not return %s: %+v", id, list)
	}
	if found.SSHAddr != info.SSHAddr || found.ContainerID != info.ContainerID || strings.Join(found.HostKeys, ",") != info.HostKeys[0] {
		t.Errorf("List: %+v, Create: %+v", *found, info)
	}
	// Another node sharing the engine neither lists nor finds it.
	other := newTestRuntime(t, testNode()+"-other")
	list, err = other.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		if in.TaskID == id {
			t.Errorf("node %s lists %s", other.node, id)
		}
	}
	if _, err := other.Inspect(t.Context(), id); !errors.Is(err, ErrNotFound) {
		t.Errorf("other node's Inspect: %v, want ErrNotFound", err)
	}
}

func TestSetAuthorizedKeys(t *testing.T) {
	t.Parallel()
	rt := newTestRuntime(t, testNode())
	keyA, lineA := newSigner(t)
	keyB, lineB := newSigner(t)
	id := testTaskID("keys")
	info := createVPS(t, rt, Spec{TaskID: id, AuthorizedKeys: []string{lineA}})
	hk := info.HostKeys[0]

	if _, err := dialSSH(t, info.SSHAddr, "root", keyA, hk); err != nil {
		t.Fatalf("key A before the change: %v", err)
	}
	if err := rt.SetAuthorizedKeys(t.Context(), id, "", []string{lineB}); err != nil {
		t.Fatal(err)
	}
	if _, err := dialSSH(t, info.SSHAddr, "root", keyA, hk); err == nil {
		t.Error("removed key A still logs in")
	}
	if _, err := dialSSH(t, info.SSHAddr, "root", keyB, hk); err != nil {
		t.Errorf("new key B: %v", err)
	}

	t.Run("other login user", func(t *testing.T) {
		err := rt.SetAuthorizedKeys(t.Context(), id, "alice", []string{lineA})
		if !errors.Is(err, ErrNoUser) {
			t.Fatalf("alice before useradd: %v, want ErrNoUser", err)
		}
		execOut(t, rt, id, "useradd", "--create-home", "--shell", "/bin/bash", "alice")
		if err := rt.SetAuthorizedKeys(t.Context(), id, "alice", []string{lineA}); err != nil {
			t.Fatal(err)
		}
		got := execOut(t, rt, id, "stat", "-c", "%a %U %G", "/home/alice/.ssh", "/home/alice/.ssh/authorized_keys")
		if got != "700 alice alice\n600 alice alice" {
			t.Errorf("modes: %q", got)
		}
		c, err := dialSSH(t, info.SSHAddr, "alice", keyA, hk)
		if err != nil {
			t.Fatal(err)
		}
		if who := run(t, c, "whoami"); who != "alice" {
			t.Errorf("whoami = %q", who)
		}
	})
	t.Run("invalid line", func(t *testing.T) {
		if err := rt.SetAuthorizedKeys(t.Context(), id, "", []string{lineA + "\n" + lineB}); err == nil {
			t.Error("a line with a line break was accepted")
		}
	})
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	rt := newTestRuntime(t, testNode(), func(o *Options) { o.StopTimeout = 5 * time.Second })
	key, line := newSigner(t)
	id := testTaskID("lifecycle")
	info := createVPS(t, rt, Spec{TaskID: id, AuthorizedKeys: []string{line}})
	hk := info.HostKeys[0]
	execOut(t, rt, id, "sh", "-c", "echo kept > /root/marker")
	ctx := t.Context()

	if err := rt.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.SSHAddr(ctx, id); !errors.Is(err, ErrNotRunning) {
		t.Errorf("SSHAddr after Stop: %v, want ErrNotRunning", err)
	}
	if _, err := rt.Exec(ctx, id, []string{"true"}, nil, nil, nil); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Exec after Stop: %v, want ErrNotRunning", err)
	}
	stopped, err := rt.Inspect(ctx, id)
	if err != nil || stopped.State != "exited" || stopped.SSHAddr != "" || strings.Join(stopped.HostKeys, ",") != hk {
		t.Errorf("Inspect after Stop: %+v, %v", stopped, err)
	}
	if err := rt.Stop(ctx, id); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	ports := []string{info.SSHAddr}
	check := func(step string, in Info, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		addr, err := rt.SSHAddr(ctx, id)
		if err != nil || addr != in.SSHAddr {
			t.Errorf("%s: SSHAddr %q, %v; Info says %q", step, addr, err, in.SSHAddr)
		}
		if strings.Join(in.HostKeys, ",") != hk {
			t.Errorf("%s: host keys %q, want %q", step, in.HostKeys, hk)
		}
		c, err := dialSSH(t, addr, "root", key, hk)
		if err != nil {
			t.Fatalf("%s: ssh: %v", step, err)
		}
		if got := run(t, c, "cat /root/marker"); got != "kept" {
			t.Errorf("%s: marker = %q", step, got)
		}
		ports = append(ports, in.SSHAddr)
	}
	in, err := rt.Start(ctx, id)
	check("Start", in, err)
	in, err = rt.Restart(ctx, id)
	check("Restart", in, err)
	t.Logf("published address after create, start, restart: %v", ports)

	if err := rt.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Inspect(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("Inspect after Remove: %v, want ErrNotFound", err)
	}
	if _, err := rt.SSHAddr(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("SSHAddr after Remove: %v, want ErrNotFound", err)
	}
	if err := rt.Remove(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: %v, want ErrNotFound", err)
	}
}

func TestExec(t *testing.T) {
	t.Parallel()
	rt := newTestRuntime(t, testNode())
	id := testTaskID("exec")
	createVPS(t, rt, Spec{TaskID: id})
	ctx := t.Context()

	var stdout, stderr bytes.Buffer
	code, err := rt.Exec(ctx, id, []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, nil, &stdout, &stderr)
	if err != nil || code != 3 || stdout.String() != "out\n" || stderr.String() != "err\n" {
		t.Errorf("Exec = %d, %v; stdout %q, stderr %q", code, err, stdout.String(), stderr.String())
	}

	stdout.Reset()
	code, err = rt.Exec(ctx, id, []string{"tr", "a-z", "A-Z"}, strings.NewReader("hello\n"), &stdout, nil)
	if err != nil || code != 0 || stdout.String() != "HELLO\n" {
		t.Errorf("Exec with stdin = %d, %v; stdout %q", code, err, stdout.String())
	}

	code, err = rt.Exec(ctx, id, []string{"/no/such/binary"}, nil, nil, nil)
	if err != nil || code == 0 {
		t.Errorf("Exec of a missing binary = %d, %v; want a non-zero code", code, err)
	}
	if _, err := rt.Exec(ctx, testTaskID("nonexistent"), []string{"true"}, nil, nil, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Exec in a missing task: %v, want ErrNotFound", err)
	}
}

func TestCreateWithHostKeys(t *testing.T) {
	t.Parallel()
	rt := newTestRuntime(t, testNode())
	ecPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := gossh.MarshalPrivateKey(ecPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	ecSigner, _ := gossh.NewSignerFromKey(ecPriv)
	key, line := newSigner(t)
	info := createVPS(t, rt, Spec{
		TaskID:         testTaskID("hostkeys"),
		AuthorizedKeys: []string{line},
		HostKeys:       [][]byte{pem.EncodeToMemory(block)},
	})
	want := authorizedKey(ecSigner.PublicKey())
	if len(info.HostKeys) != 1 || info.HostKeys[0] != want {
		t.Fatalf("HostKeys = %q, want [%s]", info.HostKeys, want)
	}
	if _, err := dialSSH(t, info.SSHAddr, "root", key, want); err != nil {
		t.Fatalf("ssh with the given ecdsa host key: %v", err)
	}
}

// brokenImage commits the VPS image with cmd as its CMD, tagged for this
// run, and removes it at cleanup.
func brokenImage(t *testing.T, rt *Runtime, name string, cmd string) string {
	t.Helper()
	ctx := t.Context()
	ref := "kohakuriver/vps-test-" + name + ":" + runID
	c, err := rt.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Image: DefaultImage})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.cli.ContainerRemove(context.WithoutCancel(ctx), c.ID, client.ContainerRemoveOptions{Force: true})
	if _, err := rt.cli.ContainerCommit(ctx, c.ID, client.ContainerCommitOptions{
		Reference: ref,
		Changes:   []string{`CMD ["/bin/sh", "-c", "` + cmd + `"]`, "LABEL " + testLabel + "=" + runID},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = rt.cli.ImageRemove(context.Background(), ref, client.ImageRemoveOptions{Force: true})
	})
	return ref
}

func TestCreateErrors(t *testing.T) {
	t.Parallel()
	rt := newTestRuntime(t, testNode(), func(o *Options) { o.ReadyTimeout = 5 * time.Second })
	existing := testTaskID("existing")
	createVPS(t, rt, Spec{TaskID: existing})
	exits := brokenImage(t, rt, "exits", "echo sshd deliberately broken >&2; exit 3")
	silent := brokenImage(t, rt, "silent", "exec sleep 600")

	tests := []struct {
		name    string
		spec    Spec
		wantErr error
		wantMsg []string
	}{
		{name: "missing image", spec: Spec{Image: "kohakuriver/no-such-image:" + runID},
			wantErr: ErrImageNotFound, wantMsg: []string{"kohakuriver/no-such-image:" + runID, "testdata/vpsimage/build.sh"}},
		{name: "missing login user", spec: Spec{LoginUser: "nobody-here"},
			wantErr: ErrNoUser, wantMsg: []string{`"nobody-here"`}},
		{name: "already exists", spec: Spec{TaskID: existing}, wantErr: ErrExists},
		{name: "sshd exits", spec: Spec{Image: exits},
			wantErr: ErrNoSSHD, wantMsg: []string{"image " + exits, "exited", "deliberately broken"}},
		{name: "sshd silent", spec: Spec{Image: silent},
			wantErr: ErrNoSSHD, wantMsg: []string{"image " + silent, "no SSH banner within 5s"}},
		{name: "invalid task id", spec: Spec{TaskID: "../etc"}, wantMsg: []string{"invalid task id"}},
		{name: "bad authorized key", spec: Spec{AuthorizedKeys: []string{"ssh-ed25519 AAAA\nx"}}, wantMsg: []string{"line break"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := tt.spec
			if spec.TaskID == "" {
				spec.TaskID = testTaskID("err" + string(rune('a'+i)))
			}
			spec.Labels = map[string]string{testLabel: runID}
			_, err := rt.Create(t.Context(), spec)
			if err == nil {
				t.Fatal("Create succeeded")
			}
			t.Logf("error: %v", err)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error does not wrap %v", tt.wantErr)
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error does not mention %q", m)
				}
			}
			// A failed Create leaves nothing behind (except the one
			// that already existed).
			if spec.TaskID != existing {
				if _, err := rt.Inspect(t.Context(), spec.TaskID); !errors.Is(err, ErrNotFound) && checkTaskID(spec.TaskID) == nil {
					t.Errorf("after the failed Create, Inspect: %v", err)
				}
			}
		})
	}
}

// TestBrokenHostKeys breaks a VPS's host keys from inside, as its root
// could, and checks that this costs the VPS only its unusable keys, with one
// warning per start, while List keeps reporting every VPS of the node.
func TestBrokenHostKeys(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	node := testNode() + "-hostkeys" // List sees only this test's VPSes
	rt := newTestRuntime(t, node, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), &logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	ctx := t.Context()
	key, line := newSigner(t)
	good := createVPS(t, rt, Spec{TaskID: testTaskID("hostkeys-good")})
	badID := testTaskID("hostkeys-bad")
	createVPS(t, rt, Spec{TaskID: badID, AuthorizedKeys: []string{line}})

	ec, ecLine := testHostKey(t, "ecdsa", "")
	extra, extraLine := testHostKey(t, "ed25519", "")
	locked, _ := testHostKey(t, "ed25519", "secret")
	// Garbage, a file too big, a symlink, a directory, a missing file and
	// a passphrase, each named several times (the bound is on distinct
	// paths); one valid ecdsa key; and a valid key past the bound on paths
	// (sshd loads it, through the symlink too, so sshd still starts). sshd
	// tries every line: with each named 250 times the test took 18 s alone
	// (11 s with 4), and twice, running beside other packages' tests, the
	// sshd did not answer within the runtime's 30 s.
	var dropIn strings.Builder
	for range 4 {
		for _, k := range []string{"ssh_host_ed25519_key", "big_key", "link_key", "dir_key", "missing_key", "locked_key", "ssh_host_ecdsa_key"} {
			fmt.Fprintf(&dropIn, "HostKey /etc/ssh/%s\n", k)
		}
	}
	dropIn.WriteString("HostKey /etc/ssh/empty_key\nHostKey /etc/ssh/extra_key\n")
	if dropIn.Len() > hostKeyMaxSize {
		t.Fatalf("drop-in of %d bytes would not be read at all", dropIn.Len())
	}
	c, err := rt.inspect(ctx, badID)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.copyTo(ctx, c.ID, hostKeyDir, []tarEntry{
		{name: "ssh_host_ed25519_key", mode: 0o600, body: []byte(garbageKey)},
		{name: "big_key", mode: 0o600, body: bytes.Repeat([]byte("A"), hostKeyMaxSize+1)},
		{name: "locked_key", mode: 0o600, body: locked},
		{name: "ssh_host_ecdsa_key", mode: 0o600, body: ec},
		{name: "empty_key", mode: 0o600},
		{name: "extra_key", mode: 0o600, body: extra},
		{name: hostKeyDropIn, mode: 0o644, body: []byte(dropIn.String())},
	}); err != nil {
		t.Fatal(err)
	}
	execOut(t, rt, badID, "sh", "-c", "cd /etc/ssh && ln -s extra_key link_key && mkdir -m 700 dir_key")

	// A new start: the cached keys no longer apply.
	restarted, err := rt.Restart(ctx, badID)
	if err != nil {
		t.Fatalf("Restart of the VPS with broken host keys: %v", err)
	}
	if restarted.State != StateRunning || !slices.Equal(restarted.HostKeys, []string{ecLine}) {
		t.Errorf("Restart: state %s, host keys %q; want running, [%s]", restarted.State, restarted.HostKeys, ecLine)
	}
	for i := range 2 { // two heartbeats
		list, err := rt.List(ctx)
		if err != nil {
			t.Fatalf("List %d: %v", i+1, err)
		}
		byTask := map[string]Info{}
		for _, in := range list {
			byTask[in.TaskID] = in
		}
		if in := byTask[good.TaskID]; in.State != StateRunning || in.SSHAddr != good.SSHAddr || !slices.Equal(in.HostKeys, good.HostKeys) {
			t.Errorf("List %d, healthy VPS: %+v, want as created: %+v", i+1, in, good)
		}
		if in := byTask[badID]; in.State != StateRunning || in.SSHAddr != restarted.SSHAddr || !slices.Equal(in.HostKeys, []string{ecLine}) {
			t.Errorf("List %d, broken VPS: %+v, want running at %s with [%s]", i+1, in, restarted.SSHAddr, ecLine)
		}
	}
	// The reported key is one the VPS's sshd serves.
	if _, err := dialSSH(t, restarted.SSHAddr, "root", key, ecLine); err != nil {
		t.Errorf("ssh with the reported ecdsa host key: %v", err)
	}

	warnings := func() []string {
		var out []string
		for l := range strings.Lines(logs.String()) {
			if strings.Contains(l, "level=WARN") && strings.Contains(l, "task_id="+badID) {
				out = append(out, l)
			}
		}
		return out
	}
	w := warnings()
	if len(w) != 1 {
		t.Fatalf("%d warnings for %s after a restart and two Lists, want 1: %q", len(w), badID, w)
	}
	for _, want := range []string{"/etc/ssh/ssh_host_ed25519_key: not a private key", "/etc/ssh/locked_key: passphrase protected", "big_key", "link_key", "dir_key", "names more than 8"} {
		if !strings.Contains(w[0], want) {
			t.Errorf("warning does not mention %q: %s", want, w[0])
		}
	}
	all := logs.String()
	for _, secret := range []string{"SECRETMARKER", "PRIVATE KEY", strings.Fields(ecLine)[1], strings.Fields(extraLine)[1]} {
		if strings.Contains(all, secret) {
			t.Errorf("the log contains key material %.20q", secret)
		}
	}

	// A read the context cut short is not cached: the next one reads again.
	c, err = rt.inspect(ctx, badID)
	if err != nil {
		t.Fatal(err)
	}
	rt.keys.forget(c.ID)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if keys, err := rt.hostKeysOf(cancelled, badID, c); err == nil {
		t.Errorf("read with a cancelled context = %q, want an error", keys)
	}
	if keys, ok := rt.keys.get(c.ID, c.State.StartedAt); ok {
		t.Errorf("cut-short read cached: %q", keys)
	}
	in, err := rt.Inspect(ctx, badID)
	if err != nil || !slices.Equal(in.HostKeys, []string{ecLine}) {
		t.Errorf("Inspect after the cut-short read: %q, %v", in.HostKeys, err)
	}
	if n := len(warnings()); n != 2 {
		t.Errorf("%d warnings after reading again, want 2", n)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
