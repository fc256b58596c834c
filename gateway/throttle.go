package gateway

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// ThrottleConfig bans source addresses that keep failing to log in, like
// sshd's PerSourcePenalties. One throttle serves every listener of a Server.
type ThrottleConfig struct {
	// MaxFailures within Window bans the source; default 20, negative
	// disables throttling.
	MaxFailures int
	// Window over which failures count; default 1m.
	Window time.Duration
	// Ban is how long a banned source is refused; default 5m.
	Ban time.Duration
	// Allow lists sources never banned (monitoring, bastions).
	Allow []netip.Prefix
}

// maxThrottleEntries bounds the throttle's memory under a wide scan: past it,
// the oldest entries are dropped first.
const maxThrottleEntries = 100_000

type throttle struct {
	now func() time.Time

	mu      sync.Mutex
	cfg     ThrottleConfig // replaced by setConfig on reload
	sources map[netip.Addr]*sourceState
}

type sourceState struct {
	windowStart time.Time
	failures    int
	bannedUntil time.Time
}

func newThrottle(cfg ThrottleConfig) *throttle {
	return &throttle{cfg: cfg.withDefaults(), now: time.Now, sources: map[netip.Addr]*sourceState{}}
}

// setConfig changes the rules; bans and counts in progress are kept.
func (t *throttle) setConfig(cfg ThrottleConfig) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cfg = cfg.withDefaults()
}

func (t *throttle) banDuration() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cfg.Ban
}

func (cfg ThrottleConfig) withDefaults() ThrottleConfig {
	if cfg.MaxFailures == 0 {
		cfg.MaxFailures = 20
	}
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	if cfg.Ban <= 0 {
		cfg.Ban = 5 * time.Minute
	}
	return cfg
}

func sourceAddr(a net.Addr) (netip.Addr, bool) {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(tcp.IP)
	return ip.Unmap(), ok
}

// allowedLocked reports whether ip is on the allowlist; t.mu is held.
func (t *throttle) allowedLocked(ip netip.Addr) bool {
	for _, p := range t.cfg.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// banned reports whether connections from a should be refused now.
func (t *throttle) banned(a net.Addr) bool {
	ip, ok := sourceAddr(a)
	if !ok {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cfg.MaxFailures < 0 || t.allowedLocked(ip) {
		return false
	}
	st := t.sources[ip]
	return st != nil && t.now().Before(st.bannedUntil)
}

// fail records a failed login from a and reports whether it is now banned.
func (t *throttle) fail(a net.Addr) bool {
	ip, ok := sourceAddr(a)
	if !ok {
		return false
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cfg.MaxFailures < 0 || t.allowedLocked(ip) {
		return false
	}
	st := t.sources[ip]
	if st == nil {
		if len(t.sources) >= maxThrottleEntries {
			t.pruneLocked(now)
		}
		st = &sourceState{windowStart: now}
		t.sources[ip] = st
	}
	if now.Sub(st.windowStart) > t.cfg.Window {
		st.windowStart, st.failures = now, 0
	}
	st.failures++
	if st.failures >= t.cfg.MaxFailures {
		st.bannedUntil = now.Add(t.cfg.Ban)
		st.failures = 0
		return true
	}
	return false
}

// pruneLocked drops expired entries, or, if none expired, half the map.
func (t *throttle) pruneLocked(now time.Time) {
	for ip, st := range t.sources {
		if now.After(st.bannedUntil) && now.Sub(st.windowStart) > t.cfg.Window {
			delete(t.sources, ip)
		}
	}
	for ip := range t.sources {
		if len(t.sources) < maxThrottleEntries/2 {
			break
		}
		delete(t.sources, ip)
	}
}
