package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// fakeNode owns the bulk records. No agent has that name, so nothing ever
// dials them; the gateway still opens a port listener for each running one.
const fakeNode = "bench-fake-node"

// BulkResult is the scale measure: connect + true through the gateway
// before and after the store holds many VPS records and the gateway many
// port listeners.
type BulkResult struct {
	Records           int       `json:"records"`
	Running           int       `json:"running"`
	Listening         int       `json:"port_listeners"`
	InsertSeconds     float64   `json:"insert_seconds"`
	ListenWaitSeconds float64   `json:"listen_wait_seconds"`
	FDs               int       `json:"open_fds_after"`
	DeleteSeconds     float64   `json:"delete_seconds"`
	BeforeA           []float64 `json:"before_a_ms"`
	BeforeC           []float64 `json:"before_c_ms"`
	AfterA            []float64 `json:"after_a_ms"` // with the records
	AfterC            []float64 `json:"after_c_ms"`
	RemovedA          []float64 `json:"removed_a_ms"` // after deleting them again
	RemovedC          []float64 `json:"removed_c_ms"`
	RatioA            float64   `json:"ratio_a"` // after/before medians, direct
	RatioC            float64   `json:"ratio_c"` // after/before medians, gateway
	// RatioABA* compare "after" with the mean of "before" and "removed"
	// (drift of the machine during the run cancels to first order), and
	// RatioNormalized divides the gateway's by the direct path's.
	RatioABAA       float64 `json:"ratio_aba_a"`
	RatioABAC       float64 `json:"ratio_aba_c"`
	RatioNormalized float64 `json:"ratio_aba_c_over_a"`
}

func (b *BulkResult) print(w io.Writer) {
	fmt.Fprintf(w, "scale: %d VPS records (%d running on a fake node), %d gateway port listeners; insert %.1f s, listeners up %.1f s later; %d fds open\n",
		b.Records, b.Running, b.Listening, b.InsertSeconds, b.ListenWaitSeconds, b.FDs)
	fmt.Fprintf(w, "  connect + true medians, ms: before A %.1f C %.1f | with the records A %.1f C %.1f | deleted again (%.1f s) A %.1f C %.1f\n",
		median(b.BeforeA), median(b.BeforeC), median(b.AfterA), median(b.AfterC), b.DeleteSeconds, median(b.RemovedA), median(b.RemovedC))
	fmt.Fprintf(w, "  with/before: C %.3f, A %.3f | with/mean(before, deleted): C %.3f, A %.3f, C/A %.3f\n",
		b.RatioC, b.RatioA, b.RatioABAC, b.RatioABAA, b.RatioNormalized)
}

func runBulk(ctx context.Context, e *env, o options) (BulkResult, error) {
	res := BulkResult{Records: o.bulk, Running: o.bulkRunning}
	sample := func(as, cs *[]float64) error {
		for range o.bulkSamples {
			for _, p := range []path{e.pathA(), e.pathC()} {
				// One retry: the VPS sshd may still be reaping the
				// previous measure's sessions.
				d, err := connectTrueRetrying(ctx, e, p, 2, 5*time.Second)
				if err != nil {
					return err
				}
				ms := float64(d.Microseconds()) / 1000
				if p.name == "A" {
					*as = append(*as, ms)
				} else {
					*cs = append(*cs, ms)
				}
			}
		}
		return nil
	}
	// After the sessions measure, thousands of sshd processes are still
	// exiting: wait until the direct path answers before sampling.
	if _, err := connectTrueRetrying(ctx, e, e.pathA(), 12, 10*time.Second); err != nil {
		return res, fmt.Errorf("scale: the VPS sshd does not answer: %w", err)
	}
	fmt.Printf("scale: %d connect + true samples each on A and C before the insert...\n", o.bulkSamples)
	if err := sample(&res.BeforeA, &res.BeforeC); err != nil {
		return res, err
	}

	// Running records first: they get the lowest ports of the range, below
	// the kernel's ephemeral ports (32768+), so the listeners can bind.
	fmt.Printf("scale: inserting %d VPS records (%d running)...\n", o.bulk, o.bulkRunning)
	st := e.host.Store()
	start := time.Now()
	ports := make([]int, 0, o.bulkRunning)
	ids := make([]string, 0, o.bulk)
	for i := range o.bulk {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		status := store.StatusStopped
		if i < o.bulkRunning {
			status = store.StatusRunning
		}
		key, err := randomKey()
		if err != nil {
			return res, err
		}
		v, err := st.CreateVPS(ctx, store.VPS{
			Name: fmt.Sprintf("bulk-%05d", i), Owner: "bench", Node: fakeNode, Status: status,
			Image: o.image, KeyMode: store.KeyModeString, Keys: []store.AuthorizedKey{key},
		})
		if err != nil {
			return res, fmt.Errorf("insert record %d: %w", i, err)
		}
		ids = append(ids, v.TaskID)
		if status == store.StatusRunning {
			ports = append(ports, v.SSHPort)
		}
		if (i+1)%2000 == 0 {
			fmt.Printf("scale: %d records in %.1f s\n", i+1, time.Since(start).Seconds())
		}
	}
	res.InsertSeconds = time.Since(start).Seconds()

	gw := e.host.Gateway()
	listening := func() int {
		n := 0
		for _, p := range ports {
			if gw.PortListening(p) {
				n++
			}
		}
		return n
	}
	// Wait until every listener is up, or no progress for 10 s (a port
	// taken by another process stays closed), at most 3 minutes.
	start = time.Now()
	last, lastChange := -1, time.Now()
	for time.Since(start) < 3*time.Minute && ctx.Err() == nil {
		n := listening()
		if n != last {
			last, lastChange = n, time.Now()
		}
		if n == len(ports) || time.Since(lastChange) > 10*time.Second {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.Listening = listening()
	res.ListenWaitSeconds = time.Since(start).Seconds()
	res.FDs = openFDs()

	fmt.Printf("scale: %d listeners up; %d samples each on A and C after the insert...\n", res.Listening, o.bulkSamples)
	if err := sample(&res.AfterA, &res.AfterC); err != nil {
		return res, err
	}

	// Delete them again and measure once more: before and removed bracket
	// the "with" samples in time.
	fmt.Printf("scale: deleting the %d records...\n", o.bulk)
	start = time.Now()
	for _, id := range ids {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		if err := st.DeleteVPS(ctx, id); err != nil {
			return res, fmt.Errorf("delete record %s: %w", id, err)
		}
	}
	if err := waitUntil(ctx, 3*time.Minute, "port listeners to close", func() bool { return listening() == 0 }); err != nil {
		return res, err
	}
	res.DeleteSeconds = time.Since(start).Seconds()
	fmt.Printf("scale: %d samples each on A and C after deleting them...\n", o.bulkSamples)
	if err := sample(&res.RemovedA, &res.RemovedC); err != nil {
		return res, err
	}

	res.RatioA = median(res.AfterA) / median(res.BeforeA)
	res.RatioC = median(res.AfterC) / median(res.BeforeC)
	res.RatioABAA = median(res.AfterA) / ((median(res.BeforeA) + median(res.RemovedA)) / 2)
	res.RatioABAC = median(res.AfterC) / ((median(res.BeforeC) + median(res.RemovedC)) / 2)
	res.RatioNormalized = res.RatioABAC / res.RatioABAA
	res.print(os.Stdout)
	return res, nil
}

// randomKey is a fresh ed25519 authorized key, so that each record is the
// size of a real one and the key index holds one entry per record.
func randomKey() (store.AuthorizedKey, error) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return store.AuthorizedKey{}, err
	}
	sp, err := gossh.NewPublicKey(pub)
	if err != nil {
		return store.AuthorizedKey{}, err
	}
	return store.ParseAuthorizedKey(strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sp))) + " bulk")
}

// connectTrueRetrying is connectTrue with up to tries attempts, wait apart;
// it returns the first success or the last error.
func connectTrueRetrying(ctx context.Context, e *env, p path, tries int, wait time.Duration) (time.Duration, error) {
	for try := 1; ; try++ {
		d, err := connectTrue(ctx, e, p)
		if err == nil || try == tries {
			return d, err
		}
		fmt.Printf("scale: %s: %v; retrying in %s\n", p.name, err, wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		}
	}
}
