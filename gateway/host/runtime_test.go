package host

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	tu := newGCTuner(200, 64<<20)
	for _, tc := range []struct {
		live uint64
		want int
	}{
		{0, maxGCPercent},       // nothing measured yet
		{1 << 10, maxGCPercent}, // tiny heap: capped
		{4 << 20, 1600},         // 64 MiB headroom over 4 MiB live
		{16 << 20, 400},         // headroom rules
		{32 << 20, 200},         // 200% of 32 MiB is exactly the headroom
		{500 << 20, 200},        // large heap: the base percentage
		{1 << 40, 200},          // and no overflow for huge ones
		{64<<20*100/maxGCPercent - 1, maxGCPercent},
	} {
		if got := tu.percentFor(tc.live, true); got != tc.want {
			t.Errorf("bulk: percentFor(%d) = %d, want %d", tc.live, got, tc.want)
		}
		if got := tu.percentFor(tc.live, false); got != 200 {
			t.Errorf("set-up churn: percentFor(%d) = %d, want the base 200", tc.live, got)
		}
	}
}

func TestMostlyLarge(t *testing.T) {
	tu := newGCTuner(200, 64<<20)
	hist := func(large uint64) *metrics.Float64Histogram {
		return &metrics.Float64Histogram{
			Counts:  []uint64{1000, 5, large},
			Buckets: []float64{0, 8192, 32769, 1e300},
		}
	}
	steps := []struct {
		allocated, large uint64
		want             bool
	}{
		{1 << 20, 0, false},             // small objects only
		{1<<20 + 100*33000, 100, true},  // then 100 packet buffers
		{1<<20 + 100*33000, 100, false}, // nothing allocated since
		{2<<20 + 100*33000, 110, false}, // 1 MiB, of which 10 large: small dominate
		{2<<20 + 200*33000, 210, true},
	}
	for i, s := range steps {
		if got := tu.mostlyLarge(s.allocated, hist(s.large)); got != s.want {
			t.Errorf("step %d: mostlyLarge = %v, want %v", i, got, s.want)
		}
	}
	// A histogram of an unexpected shape counts as no large objects.
	if tu.mostlyLarge(3<<20+200*33000, &metrics.Float64Histogram{}) {
		t.Error("an empty histogram counted as bulk")
	}
}

// currentGCPercent reads GOGC without changing it (SetGCPercent to read
// and restore could undo a tuner's concurrent change).
func currentGCPercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

var sink [][]byte

// cycleWith collects, allocating with alloc before each collection, until
// the tuner has seen n more cycles: its hook runs on the finalizer
// goroutine after the collection.
func cycleWith(t *testing.T, tu *gcTuner, n int64, alloc func()) {
	t.Helper()
	want := tu.cycles.Load() + n
	deadline := time.Now().Add(20 * time.Second)
	for tu.cycles.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("the tuner saw %d collections, want %d: its hook does not run after a GC", tu.cycles.Load(), want)
		}
		alloc()
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGCTunerFollowsTheHeap: after collections, GOGC is what the live heap,
// the headroom and the kind of allocation call for.
func TestGCTunerFollowsTheHeap(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	bulk := func() {
		sink = nil
		for range 200 {
			sink = append(sink, make([]byte, 33000))
		}
	}
	churn := func() {
		sink = nil
		for range 20000 {
			sink = append(sink, make([]byte, 100))
		}
	}

	// Bulk allocation, a headroom far above this test's heap: GOGC goes up.
	tu := newGCTuner(150, 1<<30)
	tu.start()
	cycleWith(t, tu, 3, bulk)
	if got := currentGCPercent(); got <= 150 || got != int(tu.percent.Load()) {
		t.Errorf("GOGC %d after bulk allocation with a 1 GiB headroom (tuner set %d), want above the base of 150", got, tu.percent.Load())
	}
	// Small objects only: the base, whatever the headroom.
	cycleWith(t, tu, 3, churn)
	if got := currentGCPercent(); got != 150 {
		t.Errorf("GOGC %d after small allocations only, want the base 150", got)
	}
	tu.stop()

	// Bulk again, but a live heap that the headroom is small against.
	live := make([][]byte, 64)
	for i := range live {
		live[i] = make([]byte, 1<<20)
	}
	small := newGCTuner(150, 1<<20)
	small.start()
	cycleWith(t, small, 3, bulk)
	small.stop()
	runtime.KeepAlive(live)
	if got := currentGCPercent(); got != 150 {
		t.Errorf("GOGC %d with 64 MiB live and a 1 MiB headroom, want the base 150", got)
	}

	// A stopped tuner changes nothing more.
	debug.SetGCPercent(123)
	bulk()
	runtime.GC()
	runtime.GC()
	time.Sleep(50 * time.Millisecond)
	if got := currentGCPercent(); got != 123 {
		t.Errorf("GOGC %d after the tuners stopped, want 123 as set", got)
	}
	sink = nil
}

// TestGCTunerHeadroomEndsWithTheTransfer: once bulk allocation stops, GOGC
// goes back to the base without waiting for a collection, and the
// transfer's garbage goes back to the OS.
func TestGCTunerHeadroomEndsWithTheTransfer(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	tu := newGCTuner(150, 1<<30)
	tu.lingerFor = 100 * time.Millisecond
	tu.start()
	defer tu.stop()
	cycleWith(t, tu, 2, func() {
		sink = nil
		for range 2000 { // 66 MB of packet-sized garbage per cycle
			sink = append(sink, make([]byte, 33000))
		}
	})
	sink = nil
	if got := currentGCPercent(); got <= 150 {
		t.Fatalf("GOGC %d during bulk allocation, want above the base of 150", got)
	}
	deadline := time.Now().Add(20 * time.Second)
	for currentGCPercent() != 150 {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC still %d long after bulk allocation stopped, want the base 150", currentGCPercent())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Heap memory backed by RAM: objects (the garbage too, until
	// collected), free spans not yet returned, and slack in spans.
	resident := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	for {
		metrics.Read(resident)
		var sum uint64
		for _, r := range resident {
			sum += r.Value.Uint64()
		}
		if sum < 16<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d MiB of heap still resident after the transfer ended, want its garbage returned to the OS", sum>>20)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The forced collection did not take the transfer for bulk again.
	time.Sleep(300 * time.Millisecond)
	if got := currentGCPercent(); got != 150 {
		t.Errorf("GOGC %d after the headroom ended, want the base 150", got)
	}
}

func TestGODEBUGForHost(t *testing.T) {
	for _, tc := range []struct {
		current, want string
		change        bool
	}{
		{"", "madvdontneed=0", true},
		{"  ", "madvdontneed=0", true},
		{"gctrace=1", "gctrace=1,madvdontneed=0", true},
		{"gctrace=1,http2client=0", "gctrace=1,http2client=0,madvdontneed=0", true},
		// Already decided: the operator's choice or the re-executed process.
		{"madvdontneed=0", "madvdontneed=0", false},
		{"madvdontneed=1", "madvdontneed=1", false},
		{"gctrace=1, madvdontneed=1", "gctrace=1, madvdontneed=1", false},
		// A key that merely contains the name is another setting.
		{"xmadvdontneed=1", "xmadvdontneed=1,madvdontneed=0", true},
	} {
		got, change := GODEBUGForHost(tc.current)
		if got != tc.want || change != tc.change {
			t.Errorf("GODEBUGForHost(%q) = %q, %v; want %q, %v", tc.current, got, change, tc.want, tc.change)
		}
	}
}

// envLazyFreeChild makes the test binary a child that frees a heap it
// touched and reports what the kernel then counts as LazyFree.
const envLazyFreeChild = "KOHAKURIVER_TEST_LAZYFREE_CHILD"

// TestMADVFreeKeepsFreedHeapMapped checks the premise of GODEBUGForHost on
// this kernel and Go: with madvdontneed=0 the memory the runtime hands back
// stays mapped as LazyFree (reusing it costs no page fault); with Go's
// default it is dropped at once.
func TestMADVFreeKeepsFreedHeapMapped(t *testing.T) {
	if _, err := os.Stat("/proc/self/smaps_rollup"); err != nil {
		t.Skip("no /proc/self/smaps_rollup (Linux 4.14+):", err)
	}
	lazyFree := func(godebug string) int64 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMADVFreeChild$", "-test.v")
		cmd.Env = append(os.Environ(), envLazyFreeChild+"=1", "GODEBUG="+godebug)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child with GODEBUG=%s: %v\n%s", godebug, err, out)
		}
		m := regexp.MustCompile(`lazyfree=(\d+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("child with GODEBUG=%s said no lazyfree=:\n%s", godebug, out)
		}
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		return n
	}
	const heap = 64 << 20
	if got := lazyFree("madvdontneed=0"); got < heap/2 {
		t.Errorf("madvdontneed=0: %d bytes LazyFree after freeing %d; want most of it (MADV_FREE)", got, heap)
	}
	if got := lazyFree("madvdontneed=1"); got != 0 {
		t.Errorf("madvdontneed=1: %d bytes LazyFree; want 0 (MADV_DONTNEED drops pages at once)", got)
	}
}

// TestMADVFreeChild is the child of TestMADVFreeKeepsFreedHeapMapped: it
// touches 64 MiB of heap, drops it, has the runtime return it, and prints
// the LazyFree figure.
func TestMADVFreeChild(t *testing.T) {
	if os.Getenv(envLazyFreeChild) == "" {
		t.Skip("child of TestMADVFreeKeepsFreedHeapMapped")
	}
	touchHeap(64, 1<<20)
	runtime.GC()
	debug.FreeOSMemory()
	data, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^LazyFree:\s+(\d+) kB`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("no LazyFree line in smaps_rollup:\n%s", data)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	fmt.Printf("lazyfree=%d\n", kb<<10)
}

// touchHeap allocates n buffers of size bytes, writes every page of them,
// and drops them.
func touchHeap(n, size int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
		for j := 0; j < size; j += 4096 {
			bufs[i][j] = 1
		}
	}
	runtime.KeepAlive(bufs)
}

func TestProcsFor(t *testing.T) {
	for _, tc := range []struct {
		current int
		fromEnv bool
		want    int
	}{
		{2, false, 1},
		{1, false, 0},
		{3, false, 0},
		{16, false, 0},
		{2, true, 0}, // GOMAXPROCS=2 in the environment: the operator's choice
	} {
		if got := procsFor(tc.current, tc.fromEnv); got != tc.want {
			t.Errorf("procsFor(%d, %v) = %d; want %d", tc.current, tc.fromEnv, got, tc.want)
		}
	}
}

// envTuneChild makes the test binary a child that calls TuneRuntime and
// prints GOMAXPROCS and GOGC.
const envTuneChild = "KOHAKURIVER_TEST_TUNE_CHILD"

// TestTuneRuntimeInProcess runs TuneRuntime in fresh processes: one P on a
// machine of up to two CPUs and Go's default above, GOGC 50; an explicit
// GOMAXPROCS or GOGC in the environment is kept.
func TestTuneRuntimeInProcess(t *testing.T) {
	tune := func(env ...string) (before, procs, gogc int) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestTuneRuntimeChild$", "-test.v")
		cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
			return strings.HasPrefix(kv, "GOMAXPROCS=") || strings.HasPrefix(kv, "GOGC=")
		}), append(env, envTuneChild+"=1")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child %q: %v\n%s", env, err, out)
		}
		m := regexp.MustCompile(`before=(\d+) procs=(\d+) gogc=(-?\d+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("child %q printed no procs=:\n%s", env, out)
		}
		before, _ = strconv.Atoi(string(m[1]))
		procs, _ = strconv.Atoi(string(m[2]))
		gogc, _ = strconv.Atoi(string(m[3]))
		return before, procs, gogc
	}
	before, procs, gogc := tune()
	wantProcs := before // Go's default: CPUs, or the cgroup's limit
	if before <= smallMachineProcs {
		wantProcs = 1
	}
	if procs != wantProcs || gogc != DefaultGCPercent {
		t.Errorf("defaults with Go's GOMAXPROCS %d: GOMAXPROCS %d, GOGC %d; want %d, %d", before, procs, gogc, wantProcs, DefaultGCPercent)
	}
	if _, procs, gogc := tune("GOMAXPROCS=2", "GOGC=80"); procs != 2 || gogc != 80 {
		t.Errorf("GOMAXPROCS=2 GOGC=80 in the environment: got %d, %d; want them kept", procs, gogc)
	}
}

// TestTuneRuntimeChild is the child of TestTuneRuntimeInProcess.
func TestTuneRuntimeChild(t *testing.T) {
	if os.Getenv(envTuneChild) == "" {
		t.Skip("child of TestTuneRuntimeInProcess")
	}
	before := runtime.GOMAXPROCS(0)
	TuneRuntime()
	gogc := debug.SetGCPercent(100)
	fmt.Printf("before=%d procs=%d gogc=%d\n", before, runtime.GOMAXPROCS(0), gogc)
}
