// Command bench measures the kohakuriver gateway side by side with OpenSSH on
// one machine: a direct login to a VPS's published sshd (path A), the same
// login through an OpenSSH ProxyJump host (path B), and the gateway (path C).
//
//	go run ./gateway/bench -rounds 5 -size 1G -sessions 200 -json results.json
//
// It starts a host (store, gateway, API) and one agent with the Docker
// runtime in this process, creates one VPS through the API, runs a jump
// sshd on 127.0.0.1, and drives the OpenSSH client against all three paths
// in interleaved rounds (A B C, A B C, ...) so that machine noise cancels out
// in the ratios. See README.md for what each measure means.
//
// Only 127.0.0.1 and the VPS container are used. Everything it starts
// (sshd, ssh clients, the container, the child process of the sessions
// test) is stopped by PID or removed before it exits, also on SIGINT.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kohakuriver/kohakuriver/gateway/host"
)

// options are the command-line flags.
type options struct {
	rounds      int
	size        int64
	sizeText    string
	latencyN    int
	sessions    int
	sessionConc int
	sessionVPS  int
	bulk        int
	bulkRunning int
	bulkSamples int
	portMin     int
	portMax     int
	only        map[string]bool
	jsonPath    string
	cpuProfile  string
	memProfile  string
	image       string
	verbose     bool
	handoff     bool
}

// Measures that -only selects.
const (
	measureUpload   = "upload"
	measureConnect  = "connect"
	measureSessions = "sessions"
	measureBulk     = "bulk"
)

var allMeasures = []string{measureUpload, measureConnect, measureSessions, measureBulk}

// maxSessions bounds -sessions: every session is a pty, an sshd process
// pair and a `cat` in the VPS.
const maxSessions = 2000

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o options
	var only string
	fs.IntVar(&o.rounds, "rounds", 5, "interleaved rounds (A B C per measure in each round)")
	fs.StringVar(&o.sizeText, "size", "1G", "bytes per upload (suffix K, M, G: powers of 1024)")
	fs.IntVar(&o.latencyN, "latency-n", 5, "connect + true samples per path per round (the round's value is their median)")
	fs.IntVar(&o.sessions, "sessions", 200, fmt.Sprintf("concurrent interactive sessions through the gateway (max %d)", maxSessions))
	fs.IntVar(&o.sessionConc, "session-dial-concurrency", 8, "sessions being set up at once (the VPS sshd drops unauthenticated connections past MaxStartups 10)")
	fs.IntVar(&o.sessionVPS, "session-vps", 0, fmt.Sprintf("VPSs the sessions are spread over; 0: one per %d sessions (a VPS on a fuse-overlayfs engine runs out of descriptors at about 400)", sessionsPerVPS))
	fs.IntVar(&o.bulk, "bulk", 10000, "VPS records inserted into the store for the scale measure")
	fs.IntVar(&o.bulkRunning, "bulk-running", 2000, "how many of the -bulk records are running (each gets a gateway port listener)")
	fs.IntVar(&o.bulkSamples, "bulk-samples", 21, "connect + true samples per path before the bulk insert, with the records, and after deleting them")
	fs.IntVar(&o.portMin, "port-min", 30000, "first per-VPS gateway port (the range must hold -bulk + 1 ports)")
	fs.IntVar(&o.portMax, "port-max", 41000, "last per-VPS gateway port")
	fs.StringVar(&only, "only", strings.Join(allMeasures, ","), "measures to run, comma-separated: "+strings.Join(allMeasures, ","))
	fs.StringVar(&o.jsonPath, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (host + agent) during an extra, unmeasured gateway upload")
	fs.StringVar(&o.memProfile, "memprofile", "", "write a heap profile while all -sessions sessions are open")
	fs.StringVar(&o.image, "image", "kohakuriver/vps:latest", "VPS image (built by testdata/vpsimage/build.sh)")
	fs.BoolVar(&o.verbose, "v", false, "log the host and agent to stderr")
	fs.BoolVar(&o.handoff, "handoff", true, "the agent hands the sshd's socket to the gateway on its local socket, as on the host's own machine; false: every byte through the agent's TCP relay, as for a node on another machine")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.size, err = parseSize(o.sizeText); err != nil {
		return o, err
	}
	o.only = map[string]bool{}
	for _, m := range strings.Split(only, ",") {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		known := false
		for _, a := range allMeasures {
			known = known || a == m
		}
		if !known {
			return o, fmt.Errorf("-only: unknown measure %q (know %s)", m, strings.Join(allMeasures, ","))
		}
		o.only[m] = true
	}
	switch {
	case o.rounds < 1 || o.rounds > 100:
		return o, errors.New("-rounds must be 1..100")
	case o.latencyN < 1 || o.latencyN > 100:
		return o, errors.New("-latency-n must be 1..100")
	case o.sessions < 1 || o.sessions > maxSessions:
		return o, fmt.Errorf("-sessions must be 1..%d", maxSessions)
	case o.sessionVPS < 0 || o.sessionVPS > 16:
		return o, errors.New("-session-vps must be 0..16")
	case o.sessionConc < 1 || o.sessionConc > 64:
		return o, errors.New("-session-dial-concurrency must be 1..64")
	case o.bulk < 0 || o.bulkRunning < 0 || o.bulkRunning > o.bulk:
		return o, errors.New("-bulk-running must be 0..-bulk")
	case o.bulkSamples < 1 || o.bulkSamples > 200:
		return o, errors.New("-bulk-samples must be 1..200")
	case o.portMin < 1024 || o.portMax > 65535 || o.portMax-o.portMin < o.bulk:
		return o, fmt.Errorf("-port-min..-port-max must lie in 1024..65535 and hold -bulk + 1 = %d ports", o.bulk+1)
	case o.size < 4<<20:
		return o, errors.New("-size must be at least 4M")
	}
	if o.sessionVPS == 0 {
		o.sessionVPS = (o.sessions + sessionsPerVPS - 1) / sessionsPerVPS
	}
	return o, nil
}

// sessionsPerVPS is the default spread of the sessions measure. Every
// session holds about 45 open files of the VPS's root file system; on a
// Docker engine with the fuse-overlayfs storage driver those are
// descriptors of one fuse-overlayfs process per container, which has the
// engine's RLIMIT_NOFILE (20000 here): about 400 sessions per VPS.
const sessionsPerVPS = 250

// parseSize reads "1G", "512M", "64MiB", "1048576".
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (64<<30)/mult {
		return 0, fmt.Errorf("-size %q: want a positive size up to 64G such as 1G or 512M", s)
	}
	return n * mult, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == sessionsChildArg {
		os.Exit(sessionsChild())
	}
	if len(os.Args) > 1 && os.Args[1] == feedChildArg {
		os.Exit(feedChild())
	}
	if len(os.Args) > 1 && os.Args[1] == agentChildArg {
		os.Exit(agentChild())
	}
	// The bench runs the host in this process: with the GODEBUG the host
	// daemon re-executes itself with (see host.GODEBUGForHost), unless
	// GODEBUG already decides (GODEBUG=madvdontneed=1 measures Go's
	// default).
	if godebug, change := host.GODEBUGForHost(os.Getenv("GODEBUG")); change {
		if exe, err := os.Executable(); err == nil {
			err = syscall.Exec(exe, os.Args, host.WithGODEBUG(os.Environ(), godebug))
			fmt.Fprintln(os.Stderr, "bench: re-executing with GODEBUG:", err)
			os.Exit(1)
		}
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if o.memProfile != "" {
		// Fine-grained sampling, so that per-session allocations of a few
		// KiB are attributed; it slows allocation, so only when asked.
		runtime.MemProfileRate = 4096
	}
	nofile, err := raiseNoFile(65536)
	if err != nil {
		return err
	}
	res := &Results{
		Machine: machineInfo(),
		Params: Params{
			Rounds: o.rounds, SizeBytes: o.size, LatencyN: o.latencyN, Sessions: o.sessions,
			Bulk: o.bulk, BulkRunning: o.bulkRunning, NoFile: nofile, Command: strings.Join(os.Args, " "),
			Handoff: o.handoff,
		},
		Started: time.Now().UTC(),
	}
	fmt.Printf("machine: %d cores (%s), kernel %s, %s, %s; RLIMIT_NOFILE %d; load average %s\n",
		res.Machine.NProc, res.Machine.CPUModel, res.Machine.Kernel, res.Machine.OpenSSH, res.Machine.Go, nofile, res.Machine.LoadAvgStart)

	e, err := setup(ctx, o)
	if err != nil {
		return err
	}
	defer e.close()
	fmt.Printf("paths: A direct ssh -p %d root@%s | B ssh -J root@127.0.0.1:%d -p %d root@%s | C ssh -p %d %s@127.0.0.1\n",
		e.directPort, e.directHost, e.jumpPort, e.directPort, e.directHost, e.gwPort, e.vps.TaskID)
	fmt.Println("CPU is this process's utime+stime (/proc/self/stat): host and gateway run in it; the agent runs in a child process, as on a node, and is reported apart.")

	if o.only[measureUpload] || o.only[measureConnect] {
		if err := runRounds(ctx, e, o, res); err != nil {
			return err
		}
	}
	if o.cpuProfile != "" && o.only[measureUpload] {
		if err := profileUpload(ctx, e, o); err != nil {
			return err
		}
	}
	// The scale measure compares connect times a minute apart, so it runs
	// before the sessions: tearing down 2,000 sessions (thousands of VPS
	// processes) keeps the machine busy for minutes after, and two full
	// runs that measured scale then saw the direct path, which the records
	// cannot affect, drift by 9 to 12% between its samples.
	if o.only[measureBulk] {
		br, err := runBulk(ctx, e, o)
		if err != nil {
			return err
		}
		res.Bulk = &br
	}
	if o.only[measureSessions] {
		sr, err := runSessions(ctx, e, o)
		if err != nil {
			return err
		}
		res.Sessions = &sr
	}
	res.Finished = time.Now().UTC()
	res.Machine.LoadAvgEnd = loadAvg()
	res.summarize()
	fmt.Println()
	res.printTable(os.Stdout)
	if o.jsonPath != "" {
		if err := res.writeJSON(o.jsonPath); err != nil {
			return err
		}
		fmt.Printf("\nresults written to %s\n", o.jsonPath)
	}
	return nil
}

// profileUpload profiles this process during one extra gateway upload with
// the client's default cipher; it is not part of the measured rounds.
func profileUpload(ctx context.Context, e *env, o options) error {
	f, err := os.Create(o.cpuProfile)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.StartCPUProfile(f); err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	u, err := upload(ctx, e, e.cfgDefault, e.pathC(), o.size)
	pprof.StopCPUProfile()
	if err != nil {
		return fmt.Errorf("profiled upload: %w", err)
	}
	fmt.Printf("cpu profile of an extra gateway upload (%.0f MB/s, %.2f core-s/GiB) written to %s\n",
		u.MBps, u.CPUPerGiB, o.cpuProfile)
	return nil
}

// raiseNoFile lifts RLIMIT_NOFILE to want (or as far as the hard limit
// allows without privilege): thousands of port listeners and relayed
// sessions each hold descriptors. It returns the soft limit in force.
func raiseNoFile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	raised := syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
		// Unprivileged: the hard limit is the ceiling.
		raised = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			return 0, fmt.Errorf("setrlimit: %w", err)
		}
	}
	return raised.Cur, nil
}
