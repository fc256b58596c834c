package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// The sessions measure runs its x/crypto clients in a child process (this
// binary, re-executed with sessionsChildArg) so that the RSS of this
// process, which holds host and gateway, does not count client
// memory. The child reports on stdout, one JSON line after all sessions are
// open and verified, and closes them when its stdin gets a line.
const sessionsChildArg = "-sessions-child"

// Environment of the child.
const (
	envAddr     = "KOHAKURIVER_BENCH_ADDR"
	envUsers    = "KOHAKURIVER_BENCH_USERS" // comma-separated; session i uses user i mod len
	envKey      = "KOHAKURIVER_BENCH_KEY"
	envHostKeys = "KOHAKURIVER_BENCH_HOST_KEYS"
	envN        = "KOHAKURIVER_BENCH_N"
	envConc     = "KOHAKURIVER_BENCH_CONC"
)

// SessionResult is the concurrent sessions measure.
type SessionResult struct {
	Requested         int            `json:"requested"`
	VPSs              int            `json:"vpss"` // the sessions are spread over this many VPSs
	Established       int            `json:"established"`
	Verified          int            `json:"verified"` // both echoes exact while all were open
	EstablishSeconds  float64        `json:"establish_seconds"`
	VerifySeconds     float64        `json:"verify_seconds"`
	CloseSeconds      float64        `json:"close_seconds"` // until the gateway had no connection left
	CPUPerOpenMs      float64        `json:"host_cpu_ms_per_session_opened"`
	Errors            map[string]int `json:"errors,omitempty"`
	ActiveConns       int            `json:"gateway_active_conns"`
	RSSBefore         int64          `json:"rss_before_bytes"`
	RSSOpen           int64          `json:"rss_open_bytes"`
	RSSAfterClose     int64          `json:"rss_after_close_bytes"`
	RSSPerSessionKiB  float64        `json:"rss_per_session_kib"`
	HeapPerSession    float64        `json:"heap_inuse_per_session_kib"`
	HeapObjPerSession float64        `json:"heap_objects_per_session_kib"` // HeapAlloc: the live objects in HeapInuse's spans
	StackPerSession   float64        `json:"stack_inuse_per_session_kib"`
	GoroutinesPer     float64        `json:"goroutines_per_session"`
	FDsPer            float64        `json:"fds_per_session"`
	GoroutinesAfter   int            `json:"goroutines_left_after_close"` // over the count before
	HeapAfterCloseKiB float64        `json:"heap_inuse_left_after_close_kib"`
	VPSMemPerSession  float64        `json:"vps_memory_per_session_kib,omitempty"`
	VPSPids           int64          `json:"vps_pids_open,omitempty"`
}

func (s *SessionResult) print(w io.Writer) {
	fmt.Fprintf(w, "sessions: %d requested over %d VPS(s), %d established, %d verified (a unique line echoed by cat under a pty, twice, the second time with all open)\n",
		s.Requested, s.VPSs, s.Established, s.Verified)
	fmt.Fprintf(w, "  open all: %.1f s, echo all: %.2f s, close all: %.1f s; gateway conns while open: %d; host+gateway CPU %.2f ms per session opened and echoed\n",
		s.EstablishSeconds, s.VerifySeconds, s.CloseSeconds, s.ActiveConns, s.CPUPerOpenMs)
	fmt.Fprintf(w, "  host+gateway RSS: %.1f MiB before, %.1f MiB open, %.1f MiB after close (after runtime.GC + FreeOSMemory); left after close: %d goroutines, %.0f KiB heap\n",
		mib(s.RSSBefore), mib(s.RSSOpen), mib(s.RSSAfterClose), s.GoroutinesAfter, s.HeapAfterCloseKiB)
	fmt.Fprintf(w, "  per session: %.1f KiB RSS, %.1f KiB Go heap in use (%.1f KiB of it live objects), %.1f KiB goroutine stacks, %.1f goroutines, %.1f fds\n",
		s.RSSPerSessionKiB, s.HeapPerSession, s.HeapObjPerSession, s.StackPerSession, s.GoroutinesPer, s.FDsPer)
	if s.VPSPids > 0 {
		fmt.Fprintf(w, "  VPS containers: %d processes while open, %.0f KiB memory per session (their cgroups)\n", s.VPSPids, s.VPSMemPerSession)
	}
	for msg, n := range s.Errors {
		fmt.Fprintf(w, "  error x%d: %s\n", n, msg)
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// childReport is what the child prints once all sessions are open.
type childReport struct {
	Established      int            `json:"established"`
	Verified         int            `json:"verified"`
	EstablishSeconds float64        `json:"establish_seconds"`
	VerifySeconds    float64        `json:"verify_seconds"`
	Errors           map[string]int `json:"errors"`
}

// settledRSS collects garbage, returns freed memory to the OS and reads
// the resident memory the kernel cannot take back (residentRSS), so that
// before and after compare live memory.
func settledRSS() (rss int64, ms runtime.MemStats) {
	runtime.GC()
	debug.FreeOSMemory()
	runtime.ReadMemStats(&ms)
	rss, _ = residentRSS()
	return rss, ms
}

func runSessions(ctx context.Context, e *env, o options) (SessionResult, error) {
	n := o.sessions
	res := SessionResult{Requested: n}
	gw := e.host.Gateway()
	if err := waitUntil(ctx, time.Minute, "gateway idle", func() bool { return gw.ActiveConns() == 0 }); err != nil {
		return res, err
	}
	users, err := e.addSessionVPSs(ctx, o.sessionVPS)
	if err != nil {
		return res, err
	}
	res.VPSs = len(users)
	rss0, ms0 := settledRSS()
	g0, fd0 := runtime.NumGoroutine(), openFDs()
	vps0 := e.containerStats()

	exe, err := os.Executable()
	if err != nil {
		return res, err
	}
	var hostKeys []string
	for _, k := range e.host.HostKeys {
		hostKeys = append(hostKeys, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(k))))
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, exe, sessionsChildArg)
	// The clients are load, not what is measured: they run with Go's
	// default GOGC whatever this process was given.
	cmd.Env = append(os.Environ(), "GOGC=100",
		envAddr+"=127.0.0.1:"+strconv.Itoa(e.gwPort), envUsers+"="+strings.Join(users, ","), envKey+"="+e.keyPath,
		envHostKeys+"="+strings.Join(hostKeys, "\n"), envN+"="+strconv.Itoa(n), envConc+"="+strconv.Itoa(o.sessionConc))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return res, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	childErr := &lockedBuffer{}
	cmd.Stderr = childErr
	fmt.Printf("sessions: opening %d pty sessions running cat through the gateway into %d VPS(s) (%d at a time)...\n", n, len(users), o.sessionConc)
	cpu0, _, err := procCPU()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, err
	}
	waited := false
	defer func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil {
		return res, fmt.Errorf("sessions child: %w; stderr: %s", err, childErr.String())
	}
	var rep childReport
	if err := json.Unmarshal([]byte(line), &rep); err != nil {
		return res, fmt.Errorf("sessions child said %q: %w", line, err)
	}
	res.Established, res.Verified = rep.Established, rep.Verified
	res.EstablishSeconds, res.VerifySeconds, res.Errors = rep.EstablishSeconds, rep.VerifySeconds, rep.Errors

	cpu1, _, err := procCPU()
	if err != nil {
		return res, err
	}
	res.ActiveConns = gw.ActiveConns()
	rss1, ms1 := settledRSS()
	g1, fd1 := runtime.NumGoroutine(), openFDs()
	vps1 := e.containerStats()
	res.RSSBefore, res.RSSOpen = rss0, rss1
	if k := res.Established; k > 0 {
		res.RSSPerSessionKiB = float64(rss1-rss0) / 1024 / float64(k)
		res.HeapPerSession = (float64(ms1.HeapInuse) - float64(ms0.HeapInuse)) / 1024 / float64(k)
		res.HeapObjPerSession = (float64(ms1.HeapAlloc) - float64(ms0.HeapAlloc)) / 1024 / float64(k)
		res.StackPerSession = (float64(ms1.StackInuse) - float64(ms0.StackInuse)) / 1024 / float64(k)
		res.GoroutinesPer = float64(g1-g0) / float64(k)
		res.CPUPerOpenMs = (cpu1 - cpu0) * 1000 / float64(k)
		res.FDsPer = float64(fd1-fd0) / float64(k)
		if vps0.ok && vps1.ok {
			res.VPSMemPerSession = float64(vps1.mem-vps0.mem) / 1024 / float64(k)
			res.VPSPids = vps1.pids
		}
	}
	if o.memProfile != "" {
		if err := writeHeapProfile(o.memProfile); err != nil {
			return res, err
		}
		fmt.Printf("heap profile with %d sessions open written to %s (goroutines: %[2]s.goroutines)\n", res.Established, o.memProfile)
	}

	// Release the child: it closes every client.
	closeStart := time.Now()
	if _, err := io.WriteString(stdin, "close\n"); err != nil {
		return res, fmt.Errorf("sessions child: %w", err)
	}
	stdin.Close()
	err = cmd.Wait()
	waited = true
	if err != nil {
		return res, fmt.Errorf("sessions child: %w; stderr: %s", err, childErr.String())
	}
	if err := waitUntil(ctx, 2*time.Minute, "gateway connections to close", func() bool { return gw.ActiveConns() == 0 }); err != nil {
		return res, err
	}
	res.CloseSeconds = time.Since(closeStart).Seconds()
	// Goroutines that outlive their connection would show here; give the
	// hop's teardown (it waits for channels to drain) a moment first.
	_ = waitUntil(ctx, 10*time.Second, "goroutines to end", func() bool { return runtime.NumGoroutine() <= g0 })
	var ms2 runtime.MemStats
	res.RSSAfterClose, ms2 = settledRSS()
	res.GoroutinesAfter = runtime.NumGoroutine() - g0
	res.HeapAfterCloseKiB = (float64(ms2.HeapInuse) - float64(ms0.HeapInuse)) / 1024
	res.print(os.Stdout)
	return res, nil
}

// writeHeapProfile writes the heap profile to path and the goroutines, by
// stack, as text to path + ".goroutines".
func writeHeapProfile(path string) error {
	runtime.GC()
	for _, p := range []struct {
		file  string
		write func(io.Writer) error
	}{
		{path, pprof.WriteHeapProfile},
		{path + ".goroutines", func(w io.Writer) error { return pprof.Lookup("goroutine").WriteTo(w, 1) }},
	} {
		f, err := os.Create(p.file)
		if err != nil {
			return err
		}
		if err := p.write(f); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

// vpsStats is the VPS container's cgroup (v1 or v2) memory and pid count.
type vpsStats struct {
	ok   bool
	mem  int64
	pids int64
}

// containerStats sums vpsStats over the VPS containers of the run.
func (e *env) containerStats() vpsStats {
	var sum vpsStats
	for i, id := range append([]string{e.containerID}, e.extraIDs...) {
		st := containerStats(id)
		if i == 0 {
			sum.ok = st.ok
		}
		sum.ok = sum.ok && st.ok
		sum.mem += st.mem
		sum.pids += st.pids
	}
	return sum
}

func containerStats(id string) vpsStats {
	if id == "" {
		return vpsStats{}
	}
	read := func(paths ...string) (int64, bool) {
		for _, p := range paths {
			if data, err := os.ReadFile(p); err == nil {
				if v, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err == nil {
					return v, true
				}
			}
		}
		return 0, false
	}
	mem, ok1 := read(filepath.Join("/sys/fs/cgroup/memory/docker", id, "memory.usage_in_bytes"),
		filepath.Join("/sys/fs/cgroup/system.slice", "docker-"+id+".scope", "memory.current"))
	pids, ok2 := read(filepath.Join("/sys/fs/cgroup/pids/docker", id, "pids.current"),
		filepath.Join("/sys/fs/cgroup/system.slice", "docker-"+id+".scope", "pids.current"))
	return vpsStats{ok: ok1 && ok2, mem: mem, pids: pids}
}

// sessionsChild is the child process: it opens the sessions, checks the
// echoes, reports, and closes everything when told (or after 20 minutes).
func sessionsChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "sessions child:", err)
		return 1
	}
	addr, users := os.Getenv(envAddr), strings.Split(os.Getenv(envUsers), ",")
	n, err1 := strconv.Atoi(os.Getenv(envN))
	conc, err2 := strconv.Atoi(os.Getenv(envConc))
	if addr == "" || users[0] == "" || err1 != nil || err2 != nil || n < 1 || n > maxSessions || conc < 1 {
		return fail(errors.New("bad environment (run through the bench, not by hand)"))
	}
	keyPEM, err := os.ReadFile(os.Getenv(envKey))
	if err != nil {
		return fail(err)
	}
	signer, err := gossh.ParsePrivateKey(keyPEM)
	if err != nil {
		return fail(err)
	}
	var pinned [][]byte
	for _, l := range strings.Split(os.Getenv(envHostKeys), "\n") {
		k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(l))
		if err != nil {
			return fail(fmt.Errorf("gateway host key: %w", err))
		}
		pinned = append(pinned, k.Marshal())
	}
	cfg := &gossh.ClientConfig{
		Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: func(_ string, _ net.Addr, key gossh.PublicKey) error {
			for _, p := range pinned {
				if string(p) == string(key.Marshal()) {
					return nil
				}
			}
			return errors.New("gateway host key not pinned")
		},
		Timeout: 30 * time.Second,
	}

	var (
		mu       sync.Mutex
		errs     = map[string]int{}
		sessions = make([]*echoSession, n)
	)
	noteErr := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		msg := err.Error()
		if len(msg) > 160 {
			msg = msg[:160]
		}
		errs[msg]++
	}
	start := time.Now()
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c := *cfg
			c.User = users[i%len(users)]
			s, err := openEcho(addr, &c)
			if err == nil {
				err = s.roundTrip(fmt.Sprintf("open-%d-%d", i, time.Now().UnixNano()))
			}
			if err != nil {
				noteErr(err)
				if s != nil {
					s.client.Close()
				}
				return
			}
			sessions[i] = s
		}()
	}
	wg.Wait()
	established := time.Since(start)

	// With every session open at once, each echoes one more unique line.
	start = time.Now()
	var verified atomic.Int32
	for i, s := range sessions {
		if s == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.roundTrip(fmt.Sprintf("all-%d-%x", i, time.Now().UnixNano())); err != nil {
				noteErr(err)
				return
			}
			verified.Add(1)
		}()
	}
	wg.Wait()
	count := 0
	for _, s := range sessions {
		if s != nil {
			count++
		}
	}
	rep := childReport{Established: count, Verified: int(verified.Load()), EstablishSeconds: established.Seconds(),
		VerifySeconds: time.Since(start).Seconds(), Errors: errs}
	data, _ := json.Marshal(rep)
	fmt.Printf("%s\n", data)

	// Hold everything open until the parent has measured.
	release := make(chan struct{})
	go func() { _, _ = bufio.NewReader(os.Stdin).ReadString('\n'); close(release) }()
	select {
	case <-release:
	case <-time.After(20 * time.Minute):
	}
	sem = make(chan struct{}, 64)
	for _, s := range sessions {
		if s == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() { defer wg.Done(); defer func() { <-sem }(); s.client.Close() }()
	}
	wg.Wait()
	return 0
}

// echoSession is one client connection with a pty session running cat.
type echoSession struct {
	client *gossh.Client
	stdin  io.WriteCloser
	stdout io.Reader
}

func openEcho(addr string, cfg *gossh.ClientConfig) (*echoSession, error) {
	client, err := gossh.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	s := &echoSession{client: client}
	sess, err := client.NewSession()
	if err != nil {
		return s, fmt.Errorf("new session: %w", err)
	}
	// No tty echo: what comes back is cat's output only ("line\r\n" with
	// ONLCR), so every byte can be compared.
	modes := gossh.TerminalModes{gossh.ECHO: 0, gossh.TTY_OP_ISPEED: 38400, gossh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty("xterm", 24, 80, modes); err != nil {
		return s, fmt.Errorf("pty-req: %w", err)
	}
	if s.stdin, err = sess.StdinPipe(); err != nil {
		return s, err
	}
	if s.stdout, err = sess.StdoutPipe(); err != nil {
		return s, err
	}
	if err := sess.Start("cat"); err != nil {
		return s, fmt.Errorf("exec cat: %w", err)
	}
	return s, nil
}

// roundTrip writes line and checks that exactly line + "\r\n" comes back
// within 60 s (on timeout the connection is closed).
func (s *echoSession) roundTrip(line string) error {
	t := time.AfterFunc(60*time.Second, func() { s.client.Close() })
	defer t.Stop()
	if _, err := io.WriteString(s.stdin, line+"\n"); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	want := line + "\r\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(s.stdout, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if string(got) != want {
		return fmt.Errorf("echo mismatch: got %q, want %q", got, want)
	}
	return nil
}
