package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// uploadResult is one timed upload.
type uploadResult struct {
	MBps       float64 `json:"mb_per_s"` // 10^6 bytes per second
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"` // this process, utime+stime
	SysSeconds float64 `json:"sys_seconds"` // of which stime (kernel: sockets)
	// AgentCPUPerGiB is the agent child's CPU per GiB: the node side of
	// the gateway's path (its relay splices the hop to the VPS's sshd).
	AgentCPUPerGiB float64 `json:"agent_cpu_core_s_per_gib"`
	CPUPerGiB      float64 `json:"cpu_core_s_per_gib"`
	// GeneratorCPUPerGiB is the data generator's CPU per GiB: the child
	// process writing into ssh's stdin (not in CPUSeconds).
	GeneratorCPUPerGiB float64 `json:"generator_cpu_core_s_per_gib"`
	// MachineCPUPerGiB is every CPU's busy time (/proc/stat) per GiB: the
	// whole path's cost (ssh, sshd, docker-proxy, gateway, and whatever
	// else ran meanwhile).
	MachineCPUPerGiB float64 `json:"machine_cpu_core_s_per_gib"`
	// FaultsPerGiB and SwitchesPerGiB are this process's minor page faults
	// and context switches (voluntary and not, all threads) per GiB: where
	// the kernel's work is dear (a VM's page faults, wake-ups), they explain
	// CPU that the profile only shows as slow memmoves and syscalls.
	FaultsPerGiB   float64 `json:"page_faults_per_gib"`
	SwitchesPerGiB float64 `json:"context_switches_per_gib"`
}

// upload streams size bytes into `cat > /dev/null` in the VPS through path
// p. The clock starts when ssh has taken the first MiB (so after connect and
// authentication) and stops when ssh exits, which is after cat read EOF and
// the exit status came back. The CPU figures cover the whole run, connect
// included.
func upload(ctx context.Context, e *env, cfg string, p path, size int64) (uploadResult, error) {
	// Bounded: even at 5 MB/s the upload ends in time.
	ctx, cancel := context.WithTimeout(ctx, time.Minute+time.Duration(size/5e6)*time.Second)
	defer cancel()
	args := append([]string{"-F", cfg}, p.args...)
	cmd := exec.CommandContext(ctx, "ssh", append(args, "cat > /dev/null")...)
	pr, pw, err := os.Pipe()
	if err != nil {
		return uploadResult{}, err
	}
	defer pr.Close()
	defer pw.Close()
	cmd.Stdin = pr
	var errb bytes.Buffer
	cmd.Stderr = &errb
	cpu0, sys0, err := procCPU()
	if err != nil {
		return uploadResult{}, err
	}
	agentPID := strconv.Itoa(e.agent.pid())
	agent0, _, err := procCPUOf(agentPID)
	if err != nil {
		return uploadResult{}, err
	}
	busy0, err := machineBusy()
	if err != nil {
		return uploadResult{}, err
	}
	ru0, err := selfRusage()
	if err != nil {
		return uploadResult{}, err
	}
	gen, err := startFeeder(ctx, pw, size)
	pw.Close() // the generator has its own copy
	if err != nil {
		return uploadResult{}, err
	}
	err = cmd.Start()
	pr.Close() // ssh has its own copy
	if err != nil {
		cancel() // stops the generator
		_, _ = gen.wait()
		return uploadResult{}, err
	}
	serr := gen.waitStarted()
	t0 := time.Now()
	err = cmd.Wait()
	t1 := time.Now()
	genCPU, gerr := gen.wait()
	cpu1, sys1, cerr := procCPU()
	agent1, _, aerr := procCPUOf(agentPID)
	if cerr == nil {
		cerr = aerr
	}
	busy1, berr := machineBusy()
	ru1, rerr := selfRusage()
	if berr == nil {
		berr = rerr
	}
	switch {
	case err != nil:
		return uploadResult{}, fmt.Errorf("upload via %s: %w: %s", p.name, err, strings.TrimSpace(errb.String()))
	case serr != nil:
		return uploadResult{}, fmt.Errorf("upload via %s: %w", p.name, serr)
	case gerr != nil:
		return uploadResult{}, fmt.Errorf("upload via %s: %w", p.name, gerr)
	case cerr != nil:
		return uploadResult{}, cerr
	case berr != nil:
		return uploadResult{}, berr
	}
	secs := t1.Sub(t0).Seconds()
	cpu := cpu1 - cpu0
	gib := float64(size) / (1 << 30)
	return uploadResult{
		MBps:       float64(size-feedStartedAfter) / secs / 1e6,
		Seconds:    secs,
		CPUSeconds: cpu,
		SysSeconds: sys1 - sys0,
		CPUPerGiB:  cpu / gib,

		AgentCPUPerGiB:     (agent1 - agent0) / gib,
		GeneratorCPUPerGiB: genCPU / gib,

		MachineCPUPerGiB: (busy1 - busy0) / gib,
		FaultsPerGiB:     float64(ru1.Minflt-ru0.Minflt) / gib,
		SwitchesPerGiB:   float64(ru1.Nvcsw+ru1.Nivcsw-ru0.Nvcsw-ru0.Nivcsw) / gib,
	}, nil
}

// connectTrue times `ssh ... true`: process start to exit, so TCP connect,
// key exchange, authentication, the hop (for C) and session setup.
func connectTrue(ctx context.Context, e *env, p path) (time.Duration, error) {
	start := time.Now()
	if _, err := sshRun(ctx, e.cfgDefault, p, time.Minute, "true"); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// connectMedian is the median of n connect + true samples, in ms.
func connectMedian(ctx context.Context, e *env, p path, n int) (float64, error) {
	var ms []float64
	for range n {
		d, err := connectTrue(ctx, e, p)
		if err != nil {
			return 0, err
		}
		ms = append(ms, float64(d.Microseconds())/1000)
	}
	return median(ms), nil
}

// runRounds runs the interleaved rounds: in each, every measure visits A,
// B and C in turn.
func runRounds(ctx context.Context, e *env, o options, res *Results) error {
	ciphers := []struct {
		name, cfg string
	}{{cipherDefault, e.cfgDefault}, {cipherGCM, e.cfgGCM}}
	for r := 1; r <= o.rounds; r++ {
		rd := Round{N: r, Upload: map[string]map[string]uploadResult{}, ConnectMs: map[string]float64{}}
		var line strings.Builder
		fmt.Fprintf(&line, "round %d:", r)
		if o.only[measureUpload] {
			for _, c := range ciphers {
				rd.Upload[c.name] = map[string]uploadResult{}
				fmt.Fprintf(&line, " | %s MB/s", c.name)
				for _, p := range e.paths() {
					u, err := upload(ctx, e, c.cfg, p, o.size)
					if err != nil {
						return err
					}
					rd.Upload[c.name][p.name] = u
					fmt.Fprintf(&line, " %s %.0f", p.name, u.MBps)
				}
				cu := rd.Upload[c.name]["C"]
				fmt.Fprintf(&line, " (C: bench process %.2f core-s/GiB, generator %.2f, %.0f%% sys, %.0fk faults, %.0fk switches; machine A %.1f B %.1f C %.1f)", cu.CPUPerGiB, cu.GeneratorCPUPerGiB,
					100*cu.SysSeconds/max(cu.CPUSeconds, 0.01), cu.FaultsPerGiB/1000, cu.SwitchesPerGiB/1000, rd.Upload[c.name]["A"].MachineCPUPerGiB,
					rd.Upload[c.name]["B"].MachineCPUPerGiB, cu.MachineCPUPerGiB)
			}
		}
		if o.only[measureConnect] {
			fmt.Fprintf(&line, " | connect+true ms")
			for _, p := range e.paths() {
				ms, err := connectMedian(ctx, e, p, o.latencyN)
				if err != nil {
					return err
				}
				rd.ConnectMs[p.name] = ms
				fmt.Fprintf(&line, " %s %.0f", p.name, ms)
			}
		}
		fmt.Println(line.String())
		res.Rounds = append(res.Rounds, rd)
	}
	return nil
}

// procCPU returns this process's user + system CPU seconds, and the
// system part, from /proc/self/stat (fields 14 and 15, in clock ticks).
func procCPU() (total, sys float64, err error) { return procCPUOf("self") }

// procCPUOf is procCPU for another process ("self" or a PID).
func procCPUOf(pid string) (total, sys float64, err error) {
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may hold spaces: count from after ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, errors.New("/proc/self/stat: unexpected format")
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, 0, errors.New("/proc/self/stat: too few fields")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, errors.New("/proc/self/stat: bad utime/stime")
	}
	return float64(ut+st) / clockTicks, float64(st) / clockTicks, nil
}

// selfRusage is getrusage(2) for this process, all threads.
func selfRusage() (syscall.Rusage, error) {
	var ru syscall.Rusage
	err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru, err
}

// machineBusy returns the CPU seconds all CPUs spent busy since boot: the
// first line of /proc/stat without idle and iowait.
func machineBusy() (float64, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: unexpected format")
	}
	var busy uint64
	// user nice system idle iowait irq softirq steal
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += n
	}
	return float64(busy) / clockTicks, nil
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// residentRSS is this process's resident memory less what the kernel may
// reclaim at will: Rss minus LazyFree from /proc/self/smaps_rollup. The host
// returns freed heap memory with MADV_FREE (gateway/host.GODEBUGForHost),
// which leaves it resident, and counted in VmRSS, until the kernel needs it.
func residentRSS() (int64, error) {
	const rollup = "/proc/self/smaps_rollup"
	rss, err := statusField(rollup, "Rss:")
	if err != nil {
		return 0, err
	}
	lazy, err := statusField(rollup, "LazyFree:")
	if err != nil {
		return 0, err
	}
	return rss - lazy, nil
}

func statusField(file, key string) (int64, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, key) {
			f := strings.Fields(l[len(key):])
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("%s: no %s", file, key)
}

// openFDs counts this process's open descriptors.
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
