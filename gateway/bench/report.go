package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Cipher settings of the upload measure.
const (
	cipherDefault = "default"    // the client's own preference order
	cipherGCM     = "aes128-gcm" // -c aes128-gcm@openssh.com on every hop
)

// Results is everything one run measured; -json writes it.
type Results struct {
	Machine  Machine        `json:"machine"`
	Params   Params         `json:"params"`
	Started  time.Time      `json:"started"`
	Finished time.Time      `json:"finished"`
	Rounds   []Round        `json:"rounds"`
	Summary  []Row          `json:"summary"`
	Sessions *SessionResult `json:"sessions,omitempty"`
	Bulk     *BulkResult    `json:"bulk,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	NProc    int    `json:"nproc"`
	CPUModel string `json:"cpu_model"`
	Kernel   string `json:"kernel"`
	MemTotal int64  `json:"mem_total_bytes"`
	OpenSSH  string `json:"openssh"`
	Go       string `json:"go"`
	// LoadAvg is /proc/loadavg at the start and at the end: other work on
	// the machine shows here.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
}

// Params are the run's settings.
type Params struct {
	Rounds      int    `json:"rounds"`
	SizeBytes   int64  `json:"size_bytes"`
	LatencyN    int    `json:"latency_samples_per_round"`
	Sessions    int    `json:"sessions"`
	Bulk        int    `json:"bulk_records"`
	BulkRunning int    `json:"bulk_running"`
	NoFile      uint64 `json:"rlimit_nofile"`
	Command     string `json:"command"`
	// Handoff: path C's agent handed the gateway the sshd's socket
	// (-handoff); else it relayed every byte over TCP.
	Handoff bool `json:"handoff"`
}

// Round holds one interleaved round: Upload[cipher][path] and
// ConnectMs[path] (the median of the round's samples).
type Round struct {
	N         int                                `json:"round"`
	Upload    map[string]map[string]uploadResult `json:"upload,omitempty"`
	ConnectMs map[string]float64                 `json:"connect_true_ms,omitempty"`
}

// Row is one line of the summary table: medians over the rounds.
type Row struct {
	Measure string   `json:"measure"`
	Unit    string   `json:"unit"`
	A       *float64 `json:"a_direct,omitempty"`
	B       *float64 `json:"b_proxyjump,omitempty"`
	C       *float64 `json:"c_gateway,omitempty"`
	CA      *float64 `json:"c_over_a,omitempty"`
	CB      *float64 `json:"c_over_b,omitempty"`
	Target  string   `json:"target"`
	Met     string   `json:"met"` // "yes", "no", or why it cannot be judged
}

func ptr(f float64) *float64 { return &f }

// summarize computes the summary rows from the rounds and the other
// measures.
func (r *Results) summarize() {
	r.Summary = nil
	collect := func(f func(Round) (float64, bool)) []float64 {
		var xs []float64
		for _, rd := range r.Rounds {
			if x, ok := f(rd); ok {
				xs = append(xs, x)
			}
		}
		return xs
	}
	upload := func(cipher, p string, field func(uploadResult) float64) []float64 {
		return collect(func(rd Round) (float64, bool) {
			u, ok := rd.Upload[cipher][p]
			return field(u), ok
		})
	}
	mbps := func(u uploadResult) float64 { return u.MBps }
	cpu := func(u uploadResult) float64 { return u.CPUPerGiB }
	row := func(measure, unit string, a, b, c []float64) Row {
		rw := Row{Measure: measure, Unit: unit}
		if len(a) > 0 {
			rw.A = ptr(median(a))
		}
		if len(b) > 0 {
			rw.B = ptr(median(b))
		}
		if len(c) > 0 {
			rw.C = ptr(median(c))
			if rw.A != nil && *rw.A > 0 {
				rw.CA = ptr(*rw.C / *rw.A)
			}
			if rw.B != nil && *rw.B > 0 {
				rw.CB = ptr(*rw.C / *rw.B)
			}
		}
		return rw
	}
	judge := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "no"
	}

	if len(upload(cipherDefault, "C", mbps)) > 0 {
		rw := row("upload, client default cipher", "MB/s",
			upload(cipherDefault, "A", mbps), upload(cipherDefault, "B", mbps), upload(cipherDefault, "C", mbps))
		rw.Target, rw.Met = "C/B >= 2.00", judge(rw.CB != nil && *rw.CB >= 2.0)
		r.Summary = append(r.Summary, rw)

		rw = row("upload, aes128-gcm", "MB/s",
			upload(cipherGCM, "A", mbps), upload(cipherGCM, "B", mbps), upload(cipherGCM, "C", mbps))
		rw.Target, rw.Met = "C/A >= 0.85", judge(rw.CA != nil && *rw.CA >= 0.85)
		r.Summary = append(r.Summary, rw)

		// The per-GiB rows pool both ciphers' uploads.
		both := func(p string, field func(uploadResult) float64) []float64 {
			return append(upload(cipherDefault, p, field), upload(cipherGCM, p, field)...)
		}
		// CPU of this process per GiB uploaded: host and gateway. The data
		// generator and the agent are child processes. On A and B the
		// host idles (heartbeats, the collector), which C - A subtracts.
		rw = row("bench process CPU per GiB (host + gateway)", "core-s/GiB", both("A", cpu), both("B", cpu), both("C", cpu))
		rw.CA, rw.CB = nil, nil
		rw.Target, rw.Met = "C <= 1.50", judge(rw.C != nil && *rw.C <= 1.5)
		r.Summary = append(r.Summary, rw)
		if rw.A != nil && rw.C != nil {
			net := row("gateway CPU per GiB, net of the idle host (C - A)", "core-s/GiB", nil, nil, []float64{*rw.C - *rw.A})
			net.Target, net.Met = "C <= 1.50", judge(*net.C <= 1.5)
			r.Summary = append(r.Summary, net)
		}
		gen := func(u uploadResult) float64 { return u.GeneratorCPUPerGiB }
		grow := row("data generator CPU per GiB (child process writing ssh's stdin)", "core-s/GiB", both("A", gen), both("B", gen), both("C", gen))
		grow.CA, grow.CB = nil, nil
		grow.Target, grow.Met = "-", "-"
		r.Summary = append(r.Summary, grow)
		agentCPU := func(u uploadResult) float64 { return u.AgentCPUPerGiB }
		arow := row("agent process CPU per GiB (node side: relay to the VPS sshd)", "core-s/GiB", nil, nil, both("C", agentCPU))
		arow.CA, arow.CB = nil, nil
		arow.Target, arow.Met = "-", "-"
		r.Summary = append(r.Summary, arow)
		// The kernel's share, as counts: on A and B the idle host's alone.
		for _, k := range []struct {
			measure string
			field   func(uploadResult) float64
		}{
			{"bench process page faults per GiB (host + gateway)", func(u uploadResult) float64 { return u.FaultsPerGiB }},
			{"bench process context switches per GiB (likewise)", func(u uploadResult) float64 { return u.SwitchesPerGiB }},
		} {
			krow := row(k.measure, "count/GiB", both("A", k.field), both("B", k.field), both("C", k.field))
			krow.CA, krow.CB = nil, nil
			krow.Target, krow.Met = "-", "-"
			r.Summary = append(r.Summary, krow)
		}
		mach := func(u uploadResult) float64 { return u.MachineCPUPerGiB }
		mrow := row("machine CPU per GiB, whole path (all processes)", "core-s/GiB", both("A", mach), both("B", mach), both("C", mach))
		mrow.Target, mrow.Met = "-", "-"
		r.Summary = append(r.Summary, mrow)
	}
	if c := collect(func(rd Round) (float64, bool) { x, ok := rd.ConnectMs["C"]; return x, ok }); len(c) > 0 {
		get := func(p string) []float64 {
			return collect(func(rd Round) (float64, bool) { x, ok := rd.ConnectMs[p]; return x, ok })
		}
		rw := row("connect + true", "ms", get("A"), get("B"), c)
		rw.Target, rw.Met = "C/A <= 1.10", judge(rw.CA != nil && *rw.CA <= 1.10)
		r.Summary = append(r.Summary, rw)
	}
	if s := r.Sessions; s != nil {
		rw := Row{Measure: fmt.Sprintf("concurrent pty sessions via C: %d/%d echoed, twice", s.Verified, s.Requested),
			Unit: "KiB RSS/session", C: ptr(s.RSSPerSessionKiB)}
		rw.Target = "N = 2000, all ok, <= 100 KiB"
		ok := s.Verified == s.Requested && s.RSSPerSessionKiB <= 100
		switch {
		case !ok:
			rw.Met = "no"
		case s.Requested < maxSessions:
			rw.Met = fmt.Sprintf("yes at N=%d (target is N=2000)", s.Requested)
		default:
			rw.Met = "yes"
		}
		r.Summary = append(r.Summary, rw)
	}
	if b := r.Bulk; b != nil {
		met := func(ratio float64) string {
			switch {
			case ratio > 1.05:
				return "no"
			case b.Records < 10000 || b.Listening < 2000:
				return fmt.Sprintf("yes at %d records / %d ports (target 10000 / 2000)", b.Records, b.Listening)
			}
			return "yes"
		}
		rw := Row{Measure: fmt.Sprintf("connect + true with %d VPS records, %d port listeners: with/before", b.Records, b.Listening),
			Unit: "ratio", A: ptr(b.RatioA), C: ptr(b.RatioC), CA: ptr(b.RatioC / b.RatioA)}
		rw.Target, rw.Met = "C <= 1.05", met(b.RatioC)
		r.Summary = append(r.Summary, rw)
		rw = Row{Measure: "  the same, with / mean(before, deleted again)", Unit: "ratio",
			A: ptr(b.RatioABAA), C: ptr(b.RatioABAC), CA: ptr(b.RatioNormalized)}
		rw.Target, rw.Met = "C/A <= 1.05", met(b.RatioNormalized)
		r.Summary = append(r.Summary, rw)
	}
}

func (r *Results) printTable(w io.Writer) {
	if len(r.Rounds) > 0 {
		fmt.Fprintf(w, "medians over %d rounds; upload %s each; ", len(r.Rounds), humanBytes(r.Params.SizeBytes))
	}
	hop := "agent relay over TCP"
	if r.Params.Handoff {
		hop = "socket handed off by the local agent"
	}
	fmt.Fprintf(w, "A = direct OpenSSH, B = OpenSSH ProxyJump, C = kohakuriver gateway (%s); load average %s at start, %s at end\n",
		hop, r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "measure\tunit\tA direct\tB jump\tC gateway\tC/A\tC/B\ttarget\tmet")
	f := func(x *float64, prec int) string {
		if x == nil {
			return "-"
		}
		return fmt.Sprintf("%.*f", prec, *x)
	}
	for _, rw := range r.Summary {
		prec := 1
		switch rw.Unit {
		case "core-s/GiB", "ratio":
			prec = 3
		case "count/GiB":
			prec = 0
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rw.Measure, rw.Unit,
			f(rw.A, prec), f(rw.B, prec), f(rw.C, prec), f(rw.CA, 3), f(rw.CB, 3), rw.Target, rw.Met)
	}
	tw.Flush()
	if s := r.Sessions; s != nil {
		fmt.Fprintln(w)
		s.print(w)
	}
	if b := r.Bulk; b != nil {
		fmt.Fprintln(w)
		b.print(w)
	}
}

func (r *Results) writeJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

func machineInfo() Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	m.MemTotal, _ = statusField("/proc/meminfo", "MemTotal:")
	m.LoadAvgStart = loadAvg()
	var out bytes.Buffer
	cmd := exec.Command("ssh", "-V")
	cmd.Stdout, cmd.Stderr = &out, &out
	if cmd.Run() == nil {
		m.OpenSSH = strings.TrimSpace(out.String())
	}
	return m
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
