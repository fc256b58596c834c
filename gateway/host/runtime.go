package host

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultGCPercent is the host daemon's GOGC unless the environment sets one,
// for collections after which the heap grew by small objects (sessions being
// set up, the API); bulk relaying gets HeapHeadroom instead.
//
// It is a trade between the collector's CPU and the gateway's memory per
// session: the more garbage may pile up between collections, the more the
// long-lived objects of connections set up meanwhile end up scattered over
// mostly free heap spans, which stay resident (a session's set-up
// allocated about 160 KiB in the host process, in the bench's heap profile,
// of which about 48 KiB stays, much of the rest x/crypto's handshake in
// small objects). At 2,000 idle
// sessions (gateway/bench) each held 48.7 KiB of live objects in 57.6 KiB
// of heap spans at 50, against 61.5 at 100 (99.8 against 103.9 KiB of RSS;
// earlier, 66.3 at 200 and, at 250 sessions, 86 at 400). What it costs is
// the collector's share of a login: 6% more host CPU per login at 50 than
// at 100 (4.43 against 4.19 ms, two interleaved pairs of runs), about a
// quarter of a millisecond, and twice the collections for traffic that is
// neither set-up nor bulk (keystrokes, small forwarded packets), which
// allocate little. Bulk relaying is not affected: see HeapHeadroom.
const DefaultGCPercent = 50

// HeapHeadroom is the least garbage the host lets pile up between
// collections while it relays bulk data, whatever DefaultGCPercent makes
// of a small live heap.
//
// A host with few sessions has a live heap of a few MiB, so at GOGC 200 a
// bulk transfer triggered a collection every ten MiB or so relayed, more
// than a hundred per GiB, each marking the whole heap and every stack.
// With a floor of 64 MiB the collector ran about a tenth as often while the
// heap was small: the gateway's CPU per GiB relayed, net of the bench's
// data generator, fell from 1.62 to 1.30 core-s (gateway/bench, two
// interleaved runs each, base GOGC 200 then).
//
// The floor is also memory the transfer touches for the first time: the
// heap grows by it when a transfer starts, and endHeadroom hands it back
// afterwards, so every transfer page-faults it in again. Where page faults
// are dear that is most of the difference between floors: on a VM that
// took 16 µs per fault (measured: touch, MADV_DONTNEED, touch again) a
// 1 GiB upload through the gateway faulted about 20,000 pages at 64 MiB,
// and 32 MiB cost 1.76–2.13 core-s per GiB against 2.06–2.81 at 64 (four
// interleaved 2-round runs each; 16 MiB 1.93–2.26, 8 MiB 2.38–2.45, where
// the extra collections cost more than the faults save). Halving it also
// halves what a transfer holds resident.
//
// The floor applies only after a cycle whose allocation was mostly
// x/crypto's per-packet buffers (large objects, which get spans of their
// own and so never strand small objects). Applied to the small objects of
// session set-up too, it scattered the long-lived ones over mostly free
// spans: 150 KiB of RSS per session at 2,000 sessions against 125.
const HeapHeadroom = 32 << 20

// bulkLinger is how long the headroom outlasts the last collection that
// found bulk allocation; then the garbage goes back to the OS (see
// endHeadroom). The relay allocates about 1.25 bytes per byte relayed, so
// with the headroom a transfer faster than about 13 MB/s runs a collection
// at least every two seconds and keeps it; a slower one alternates between
// the two settings, at the cost of a forced collection of a small heap
// every few seconds, and hardly needs the headroom anyway.
const bulkLinger = 2 * time.Second

// maxGCPercent bounds the percentage the headroom asks for when the live
// heap is tiny (a freshly started process).
const maxGCPercent = 10000

var tuneOnce sync.Once

// The host wants the Go heap to give freed memory back with MADV_FREE
// rather than MADV_DONTNEED (the runtime's default on Linux since Go 1.16).
//
// A bulk transfer allocates and frees about 1.25 bytes of x/crypto packet
// buffers per byte relayed. Between collections the runtime's scavenger
// hands some of the freed pages back to the kernel (whenever the heap goal
// drops below what the heap reached: the goal follows the live heap, which
// moves with the packets in flight), and endHeadroom hands back the rest
// when a transfer ends. With MADV_DONTNEED each such page faults again when
// the next buffer lands on it, and on the VMs measured a fault costs 10-16
// µs. In four interleaved pairs of bench runs (gateway/bench, BENCHMARKS.md;
// 1 GiB uploads) Go's default faulted 24,000 to 34,000 pages per GiB; with
// MADV_FREE the second upload of a process faulted none (the first still
// faults the heap in once: 17,000 to 19,000), and the gateway's CPU per GiB
// was 2.71-3.06 core-s against 3.12-3.55, lower in every pair.
//
// The price: the process's RSS falls only when the kernel reclaims those
// pages, under memory pressure, so it reads high after a transfer. The
// LazyFree line of /proc/PID/smaps_rollup is the part the kernel may take
// back at any time.
//
// madvdontneed is read once, when the runtime starts, and //go:debug does
// not accept it, so the process re-executes itself with it in GODEBUG (see
// GODEBUGForHost).
const (
	madvKey     = "madvdontneed"
	madvSetting = madvKey + "=0"
)

// WithGODEBUG returns environ (KEY=value entries) with its GODEBUG entries
// replaced by one holding godebug, for re-executing the process.
func WithGODEBUG(environ []string, godebug string) []string {
	out := slices.DeleteFunc(slices.Clone(environ), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") })
	return append(out, "GODEBUG="+godebug)
}

// GODEBUGForHost returns the GODEBUG value the host daemon should run with,
// given the current one, and whether that differs (the process should
// re-execute itself to get it). A GODEBUG that already names madvdontneed is
// left alone: the operator's choice, or the re-executed process itself.
func GODEBUGForHost(current string) (string, bool) {
	for _, field := range strings.Split(current, ",") {
		if key, _, _ := strings.Cut(field, "="); strings.TrimSpace(key) == madvKey {
			return current, false
		}
	}
	if strings.TrimSpace(current) == "" {
		return madvSetting, true
	}
	return current + "," + madvSetting, true
}

// TuneRuntime applies DefaultGCPercent and HeapHeadroom when GOGC is not
// set, and one P on a small machine (see procsFor) when GOMAXPROCS is not;
// an explicit setting is the operator's choice and is left alone. Daemons
// call it once at start; these are process-wide settings, so the library
// never does. A GOMEMLIMIT still caps the heap as usual.
func TuneRuntime() {
	tuneOnce.Do(func() {
		if p := procsFor(runtime.GOMAXPROCS(0), os.Getenv("GOMAXPROCS") != ""); p != 0 {
			runtime.GOMAXPROCS(p)
		}
		if os.Getenv("GOGC") != "" {
			return
		}
		debug.SetGCPercent(DefaultGCPercent)
		newGCTuner(DefaultGCPercent, HeapHeadroom).start()
	})
}

// smallMachineProcs is the most CPUs at which the host runs its Go code on
// one P.
//
// The gateway relays each packet through a pipeline of goroutines: x/crypto's
// reader decrypts it into the channel's buffer, the relay copy takes it from
// there and encrypts and writes it to the other connection, whose reader
// takes the window adjusts that come back. With two Ps the stages run on two
// threads and hand every packet across, which means waking and parking
// threads, dear on the VMs measured; with one they hand it over on the same
// thread. On the 2-CPU machines of gateway/bench: one 1 GiB upload cost the
// gateway 1.84-2.23 core-s per GiB with one P against 2.90-3.15 with two,
// at 207-256 against 180-208 MB/s (two interleaved pairs of runs); three
// concurrent uploads through `kohakuriver up` moved 137-158 MB/s in all
// at 2.7-3.1 core-s/GiB with one P, 136-141 at 3.6 with two. The second CPU
// still runs the kernel's share of system calls from other threads, the
// sshds of local VPSs and everything else on the host. Bigger machines were
// not measured, and keep Go's default.
const smallMachineProcs = 2

// procsFor is the GOMAXPROCS the host sets, given the runtime's current one
// and whether the environment sets it; 0 to leave it as it is.
func procsFor(current int, fromEnv bool) int {
	if fromEnv || current <= 1 || current > smallMachineProcs {
		return 0
	}
	return 1
}

// gcTuner sets GOGC after every collection: base, or, when the cycle's
// allocation was mostly bulk (large objects), enough for headroom bytes of
// allocation before the next collection. Go has no "minimum heap" setting,
// and a ballast allocation would also raise the percentage part for large
// heaps and for set-up churn; setting GOGC from what the last cycle
// measured gives exactly the floor, and SetGCPercent is cheap (it takes the
// heap lock, no stop-the-world).
type gcTuner struct {
	base     int    // GOGC for a heap large enough that headroom does not matter
	headroom uint64 // bytes
	samples  []metrics.Sample
	// Cumulative counters at the previous collection (or at the end of
	// the headroom).
	allocated, large uint64
	// The headroom ends lingerFor after the last bulk cycle if no other
	// bulk cycle came meanwhile (the transfer ended).
	lingerFor time.Duration
	linger    *time.Timer
	// mu serializes afterGC (on the finalizer goroutine) and endHeadroom
	// (on the linger timer's): the samples, the counters and GOGC.
	mu      sync.Mutex
	stopped atomic.Bool
	cycles  atomic.Int64 // collections seen, for tests
	percent atomic.Int64 // last GOGC set
}

const (
	sampleLive = iota
	sampleAllocated
	sampleBySize
)

func newGCTuner(base int, headroom uint64) *gcTuner {
	return &gcTuner{
		base:      base,
		headroom:  headroom,
		lingerFor: bulkLinger,
		samples: []metrics.Sample{
			sampleLive:      {Name: "/gc/heap/live:bytes"},
			sampleAllocated: {Name: "/gc/heap/allocs:bytes"},
			sampleBySize:    {Name: "/gc/heap/allocs-by-size:bytes"},
		},
	}
}

// percentFor is the GOGC for the next cycle: at least t.headroom of
// allocation for a live heap of live bytes if bulk, else the base.
func (t *gcTuner) percentFor(live uint64, bulk bool) int {
	if !bulk {
		return t.base
	}
	if live == 0 {
		return maxGCPercent
	}
	p := t.headroom * 100 / live
	if p < uint64(t.base) {
		return t.base
	}
	return int(min(p, maxGCPercent))
}

// mostlyLarge tells whether at least half of the bytes allocated since the
// last call went to large objects. The size histogram's last bucket counts
// them (objects above 32 KiB: x/crypto's packet buffers); its lower bound
// times the count underestimates their bytes, which errs towards the base.
func (t *gcTuner) mostlyLarge(allocated uint64, bySize *metrics.Float64Histogram) bool {
	var large uint64
	var least float64
	if n := len(bySize.Counts); n > 0 && len(bySize.Buckets) == n+1 {
		large, least = bySize.Counts[n-1], bySize.Buckets[n-1]
	}
	dAlloc, dLarge := allocated-t.allocated, large-t.large
	t.allocated, t.large = allocated, large
	return dAlloc > 0 && float64(dLarge)*least*2 >= float64(dAlloc)
}

// start hooks the tuner to the end of every collection: an unreachable
// sentinel's finalizer runs (on the finalizer goroutine) once the cycle
// that found it is over, and arms the next sentinel.
func (t *gcTuner) start() {
	t.afterGC()
	t.arm()
}

// gcSentinel is larger than 16 bytes so that it is not packed with other
// tiny objects, which would delay its finalizer until they all die.
type gcSentinel struct{ _ [32]byte }

func (t *gcTuner) arm() {
	if t.stopped.Load() {
		return
	}
	runtime.SetFinalizer(new(gcSentinel), func(*gcSentinel) {
		t.afterGC()
		t.arm()
	})
}

func (t *gcTuner) afterGC() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Load() {
		return
	}
	live, allocated, bySize, ok := t.read()
	if !ok {
		t.stopped.Store(true) // a runtime without these metrics: keep the plain GOGC
		return
	}
	bulk := t.mostlyLarge(allocated, bySize)
	t.setPercent(t.percentFor(live, bulk))
	if bulk {
		if t.linger == nil {
			t.linger = time.AfterFunc(t.lingerFor, t.endHeadroom)
		} else {
			t.linger.Reset(t.lingerFor)
		}
	}
	t.cycles.Add(1)
}

// read samples the runtime's metrics: the live heap, the cumulative bytes
// allocated, and the histogram of allocations by size. Callers hold t.mu.
func (t *gcTuner) read() (live, allocated uint64, bySize *metrics.Float64Histogram, ok bool) {
	metrics.Read(t.samples)
	if t.samples[sampleLive].Value.Kind() != metrics.KindUint64 ||
		t.samples[sampleAllocated].Value.Kind() != metrics.KindUint64 ||
		t.samples[sampleBySize].Value.Kind() != metrics.KindFloat64Histogram {
		return 0, 0, nil, false
	}
	return t.samples[sampleLive].Value.Uint64(), t.samples[sampleAllocated].Value.Uint64(),
		t.samples[sampleBySize].Value.Float64Histogram(), true
}

// endHeadroom runs lingerFor after the last bulk collection, if no other
// came meanwhile: the transfer is over. Waiting for the next collection
// instead would keep the transfer's garbage (it may be minutes away) and
// let the next burst of session set-up scatter its objects over it; and
// even once collected, freed memory was not handed back to the OS within a
// minute. So the base comes back at once, and the garbage is collected and
// returned now; the live heap is below the headroom whenever the headroom
// was in effect, so this costs a few milliseconds. Measured with `kohakuriver
// up` and one 200 MB scp: 21 MB resident before, 94 at the end of the
// transfer, 23 five seconds later (without this step, 94 a minute later).
// That was with MADV_DONTNEED; the host now returns memory with MADV_FREE
// (see GODEBUGForHost), so what this hands back stays in RSS, counted as
// LazyFree, until the kernel needs it, and a transfer that starts before
// then reuses it without page faults.
func (t *gcTuner) endHeadroom() {
	t.mu.Lock()
	if t.stopped.Load() || t.percent.Load() <= int64(t.base) {
		t.mu.Unlock()
		return
	}
	// The forced collection must not take the transfer's tail for bulk
	// and raise GOGC again.
	if _, allocated, bySize, ok := t.read(); ok {
		_ = t.mostlyLarge(allocated, bySize)
	}
	t.setPercent(t.base)
	t.mu.Unlock()
	debug.FreeOSMemory()
}

// setPercent applies GOGC p if it changed. Callers hold t.mu.
func (t *gcTuner) setPercent(p int) {
	if int64(p) == t.percent.Load() {
		return
	}
	debug.SetGCPercent(p)
	t.percent.Store(int64(p))
}

// stop ends the tuning after the next collection (tests only; daemons tune
// for their lifetime).
func (t *gcTuner) stop() { t.stopped.Store(true) }
