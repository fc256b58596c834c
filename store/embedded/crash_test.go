//go:build unix

package embedded

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

// helperEnv names the database TestHelperProcess writes to; the test is a
// no-op without it.
const helperEnv = "EMBEDDED_CRASH_HELPER_DB"

// Crash-test port range: small, so creates exhaust it and deletes free ports
// for reuse.
var crashOpts = Options{PortMin: 30000, PortMax: 30031, Timeout: 5 * time.Second}

// TestCrashConsistency kills a writing child process with SIGKILL at random
// points and checks after each kill that the file is intact, indexes agree
// with records and no port is held twice.
func TestCrashConsistency(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	const rounds = 8
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), helperEnv+"="+path)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "ready\n" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("round %d: child did not start: %q, %v\n%s", round, line, err, stderr.String())
		}
		time.Sleep(time.Duration(20+rand.IntN(150)) * time.Millisecond) // kill at a random point
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child ended with %v, not SIGKILL\n%s", round, err, stderr.String())
		}

		n := checkAfterCrash(t, path)
		t.Logf("round %d: %d VPSs after kill", round, n)
		if t.Failed() {
			keepArtifact(t, path)
			return
		}
	}
}

// checkAfterCrash reopens the store, checks it, makes one write and closes
// it. It returns the number of VPSs.
func checkAfterCrash(t *testing.T, path string) int {
	t.Helper()
	opts := crashOpts
	opts.Timeout = time.Second
	db, err := Open(path, &opts)
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
		checkFile(t, path)
	}()
	ctx := context.Background()
	vs, err := db.ListVPS(ctx)
	if err != nil {
		t.Fatalf("ListVPS: %v", err)
	}
	ports := map[int]string{}
	for _, v := range vs {
		if other, dup := ports[v.SSHPort]; dup {
			t.Errorf("port %d held by %s and %s", v.SSHPort, other, v.TaskID)
		}
		ports[v.SSHPort] = v.TaskID
		if got, err := db.VPSByPort(ctx, v.SSHPort); err != nil || got.TaskID != v.TaskID {
			t.Errorf("VPSByPort(%d) = %s, %v; want %s", v.SSHPort, got.TaskID, err, v.TaskID)
		}
	}
	// The store still allocates correctly after recovery.
	v, err := db.CreateVPS(ctx, newVPS(""))
	switch {
	case errors.Is(err, store.ErrNoFreePort) && len(vs) == crashOpts.PortMax-crashOpts.PortMin+1:
	case err != nil:
		t.Errorf("CreateVPS after kill: %v", err)
	case ports[v.SSHPort] != "":
		t.Errorf("CreateVPS after kill reused port %d of %s", v.SSHPort, ports[v.SSHPort])
	default:
		if err := db.DeleteVPS(ctx, v.TaskID); err != nil {
			t.Error(err)
		}
	}
	return len(vs)
}

// TestHelperProcess is the child of TestCrashConsistency: it writes random
// creates, renames, key changes and deletes until it is killed.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("child process of TestCrashConsistency")
	}
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
		os.Exit(3)
	}
	db, err := Open(path, &crashOpts)
	if err != nil {
		fail("open: %v", err)
	}
	fmt.Println("ready")
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), uint64(time.Now().UnixNano())))
	randomName := func() string {
		if rng.IntN(4) == 0 {
			return ""
		}
		return fmt.Sprintf("vm-%d", rng.IntN(48))
	}
	randomKeys := func() []store.AuthorizedKey {
		var keys []store.AuthorizedKey
		for range rng.IntN(4) {
			keys = append(keys, testKey(rng.IntN(8)))
		}
		return keys
	}
	for {
		vs, err := db.ListVPS(ctx)
		if err != nil {
			fail("list: %v", err)
		}
		var victim store.VPS
		if len(vs) > 0 {
			victim = vs[rng.IntN(len(vs))]
		}
		switch op := rng.IntN(10); {
		case op < 5 || len(vs) == 0:
			v := newVPS(randomName())
			v.Keys = randomKeys()
			_, err = db.CreateVPS(ctx, v)
			if errors.Is(err, store.ErrNoFreePort) {
				err = db.DeleteVPS(ctx, victim.TaskID)
			}
		case op < 8:
			_, err = db.UpdateVPS(ctx, victim.TaskID, func(v *store.VPS) error {
				v.Name, v.Keys, v.Status = randomName(), randomKeys(), store.StatusRunning
				return nil
			})
		default:
			err = db.DeleteVPS(ctx, victim.TaskID)
		}
		if err != nil && !errors.Is(err, store.ErrNameTaken) {
			fail("write: %v", err)
		}
	}
}
