package host

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/gateway/testport"
	"github.com/kohakuriver/kohakuriver/store"
)

// TestHostKilledDuringCreates kills the host process with SIGKILL while VPS
// creates are in flight, several times. After the last restart every VPS
// has a unique port and its keys, none is stuck pending, and every running
// one has its pinned host key and takes a real ssh login.
func TestHostKilledDuringCreates(t *testing.T) {
	requireDocker(t)
	if testing.Short() {
		t.Skip("-short")
	}
	bin := filepath.Join(t.TempDir(), "kohakuriver")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/kohakuriver/kohakuriver").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dataDir := t.TempDir()
	apiPort, sshPort := freePort(t), freePort(t)
	portMin := testport.Block(testport.HostBlocks, 30)
	apiURL := fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	logs := &syncBuffer{}
	startHost := func() *exec.Cmd {
		cmd := exec.Command(bin, "host", "--data-dir", dataDir, "--api-addr", fmt.Sprintf("127.0.0.1:%d", apiPort),
			"--ssh-addr", fmt.Sprintf("127.0.0.1:%d", sshPort), "--vps-port-host", "127.0.0.1",
			"--vps-port-min", strconv.Itoa(portMin), "--vps-port-max", strconv.Itoa(portMin+29),
			"--admin-addr", "", "--audit-log", "-", "--public-host", "127.0.0.1", "--log-level", "warn")
		cmd.Stdout, cmd.Stderr = logs, logs
		// The daemon restarts itself with the GODEBUG it wants unless
		// GODEBUG already decides; here it does not.
		cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") })
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Whatever fails below, the process goes with the test (a second
		// Kill and Wait after the test's own are no-ops).
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		waitFor(t, "host API", func() bool {
			resp, err := http.Get(apiURL + "/healthz")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil && resp.StatusCode == 200
		})
		// The same process (exec keeps the PID) now runs with it.
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		var godebug []string // only these: the rest may hold secrets
		for _, kv := range strings.Split(string(environ), "\x00") {
			if strings.HasPrefix(kv, "GODEBUG=") {
				godebug = append(godebug, kv)
			}
		}
		if !slices.Equal(godebug, []string{"GODEBUG=madvdontneed=0"}) {
			t.Fatalf("the host did not restart itself with GODEBUG=madvdontneed=0; its GODEBUG entries: %q", godebug)
		}
		return cmd
	}
	kill := func(cmd *exec.Cmd) {
		_ = cmd.Process.Kill() // SIGKILL
		_ = cmd.Wait()
	}
	defer func() {
		if t.Failed() {
			t.Logf("host logs:\n%s", logs.String())
		}
	}()

	hostCmd := startHost()
	token := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	// The agent runs in this process and outlives every host restart.
	c := &cluster{t: t, agents: map[string]*runningAgent{}, logs: logs}
	c.host = &Host{ClusterToken: token(ClusterTokenFile)}
	node := nodeName(t, "crash")
	c.startAgentAt(node, "127.0.0.1:0", apiURL)
	admin := api.NewClient(apiURL, token(AdminTokenFile), nil)
	key := newUserKey(t)
	waitFor(t, "node online", func() bool {
		n, err := admin.Node(context.Background(), node)
		return err == nil && n.Status == store.NodeOnline
	})

	completed := 0
	for round := 0; round < 4; round++ {
		// One create that finishes before the kill...
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if _, err := admin.CreateVPS(ctx, api.CreateVPSRequest{Node: node, KeyMode: store.KeyModeString, PublicKeys: []string{key.line}}); err != nil {
			t.Fatalf("round %d: create before the kill: %v", round, err)
		}
		cancel()
		completed++
		// ...and three that the kill cuts at some point.
		var wg sync.WaitGroup
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				// Errors are expected: the host dies under some of them.
				_, _ = admin.CreateVPS(ctx, api.CreateVPSRequest{Node: node, KeyMode: store.KeyModeString, PublicKeys: []string{key.line}})
			}()
		}
		time.Sleep(time.Duration(100+rand.IntN(2500)) * time.Millisecond)
		kill(hostCmd)
		wg.Wait()
		hostCmd = startHost()
	}
	defer kill(hostCmd)

	// Settle: the agent reports, the host reconciles. A heartbeat that a
	// busy engine delayed past the host's timeout marks the node's VPSs
	// lost until the next one arrives: that is transient too.
	var vpss []store.VPS
	waitFor(t, "no VPS pending or lost after the restarts", func() bool {
		var err error
		vpss, err = admin.ListVPS(context.Background())
		if err != nil {
			return false
		}
		for _, v := range vpss {
			if v.Status == store.StatusPending || v.Status == store.StatusLost {
				return false
			}
		}
		return true
	})
	if len(vpss) == 0 {
		t.Fatal("no VPS survived at all: the kills came too early to test anything")
	}
	ports := map[int]string{}
	running := 0
	for _, v := range vpss {
		if other, dup := ports[v.SSHPort]; dup {
			t.Errorf("port %d held by %s and %s", v.SSHPort, other, v.TaskID)
		}
		ports[v.SSHPort] = v.TaskID
		if len(v.Keys) != 1 || v.Keys[0].Fingerprint != key.fp {
			t.Errorf("VPS %s lost its keys: %+v", v.TaskID, v.Keys)
		}
		switch v.Status {
		case store.StatusRunning:
			running++
			if len(v.HostKeys) == 0 {
				t.Errorf("running VPS %s has no pinned host key", v.TaskID)
			}
		case store.StatusFailed:
			if v.Message == "" {
				t.Errorf("failed VPS %s without a message", v.TaskID)
			}
		}
	}
	t.Logf("%d VPSs after the kills: %d running", len(vpss), running)
	if running < completed {
		t.Errorf("%d VPSs running, but %d creates had completed before their kill", running, completed)
	}
	// Every running VPS takes a real login through the restarted gateway.
	c.known = writeKnownHostsFor(t, admin, sshPort)
	for _, v := range vpss {
		if v.Status != store.StatusRunning {
			continue
		}
		args := []string{"-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
			"-o", "UserKnownHostsFile=" + c.known, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
			"-i", key.path, "-p", strconv.Itoa(sshPort), v.TaskID + "@127.0.0.1", "echo ok"}
		if out, err := exec.Command("ssh", args...).CombinedOutput(); err != nil || !strings.Contains(string(out), "ok") {
			t.Errorf("ssh to %s: %v %s", v.TaskID, err, out)
		}
	}
}

// writeKnownHostsFor pins the gateway's host keys, as its API tells them.
func writeKnownHostsFor(t *testing.T, admin *api.Client, sshPort int) string {
	t.Helper()
	info, err := admin.Gateway(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, k := range info.HostKeys {
		lines = append(lines, fmt.Sprintf("[127.0.0.1]:%d %s", sshPort, k))
	}
	path := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
