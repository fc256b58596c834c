package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestThrottleRules(t *testing.T) {
	now := time.Unix(1000, 0)
	a := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}
	b := &net.TCPAddr{IP: net.ParseIP("192.0.2.8"), Port: 1}
	allowed := &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 1}
	th := newThrottle(ThrottleConfig{MaxFailures: 3, Window: time.Minute, Ban: 5 * time.Minute,
		Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	th.now = func() time.Time { return now }

	steps := []struct {
		name       string
		fail       *net.TCPAddr
		advance    time.Duration
		wantBanned map[*net.TCPAddr]bool
	}{
		{name: "first failure", fail: a, wantBanned: map[*net.TCPAddr]bool{a: false}},
		{name: "second failure", fail: a, wantBanned: map[*net.TCPAddr]bool{a: false}},
		{name: "third failure bans", fail: a, wantBanned: map[*net.TCPAddr]bool{a: true, b: false}},
		{name: "other source unaffected", fail: b, wantBanned: map[*net.TCPAddr]bool{a: true, b: false}},
		{name: "still banned after 4m", advance: 4 * time.Minute, wantBanned: map[*net.TCPAddr]bool{a: true}},
		{name: "ban expires", advance: 2 * time.Minute, wantBanned: map[*net.TCPAddr]bool{a: false}},
		{name: "old failures fall out of the window", fail: b, wantBanned: map[*net.TCPAddr]bool{b: false}},
	}
	for i := 0; i < 5; i++ {
		th.fail(allowed)
	}
	if th.banned(allowed) {
		t.Fatal("allowlisted source was banned")
	}
	for _, st := range steps {
		now = now.Add(st.advance)
		if st.fail != nil {
			th.fail(st.fail)
		}
		for addr, want := range st.wantBanned {
			if got := th.banned(addr); got != want {
				t.Fatalf("%s: banned(%s) = %v, want %v", st.name, addr, got, want)
			}
		}
	}
}

func TestFailedLoginsBanSource(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.Throttle = ThrottleConfig{MaxFailures: 3, Ban: time.Hour} })
	key, stranger := newUserKey(t), newUserKey(t)
	g.addVPS(t, "guarded", 0, key)
	for i := 0; i < 3; i++ {
		if _, _, code := runSSH(t, nil, g.sshArgs(stranger, g.port(), "guarded@127.0.0.1", "true")...); code == 0 {
			t.Fatal("stranger logged in")
		}
	}
	// Even the right key is refused now: the source is banned.
	_, errOut, code := runSSH(t, nil, g.sshArgs(key, g.port(), "guarded@127.0.0.1", "true")...)
	if code == 0 {
		t.Fatal("banned source logged in")
	}
	if !strings.Contains(g.logs.String(), "source banned after repeated failed logins") {
		t.Fatalf("ban not logged; ssh said %q", errOut)
	}
}

func TestMetricsAndAudit(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	audit := &syncBuffer{}
	g := newTestGateway(t, func(c *Config) { c.Metrics = m; c.Audit = slogJSON(audit) })
	key, stranger := newUserKey(t), newUserKey(t)
	v, _ := g.addVPS(t, "watched", 0, key)
	target := echoServer(t)

	if _, _, code := runSSH(t, nil, g.sshArgs(stranger, g.port(), "watched@127.0.0.1", "true")...); code == 0 {
		t.Fatal("stranger logged in")
	}
	// A session that uses a -W forward and exits 0, then one that exits 4.
	if out, _, code := runSSH(t, []byte("hi\n"), g.sshArgs(key, g.port(), "-W", target, "watched@127.0.0.1")...); code != 0 || out != "echo:hi\n" {
		t.Fatalf("-W: %d %q", code, out)
	}
	if _, _, code := runSSH(t, nil, g.sshArgs(key, g.port(), "watched@127.0.0.1", "exit 4")...); code != 4 {
		t.Fatalf("exit 4: got %d", code)
	}
	waitFor(t, "connections to close", func() bool { return g.srv.ActiveConns() == 0 })

	if got := testutil.ToFloat64(m.connections.WithLabelValues("main")); got != 3 {
		t.Errorf("connections_total{main} = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.authFailures.WithLabelValues("key")); got < 1 {
		t.Errorf("auth_failures_total{key} = %v, want >= 1", got)
	}
	if got := testutil.ToFloat64(m.active); got != 0 {
		t.Errorf("active_connections = %v, want 0", got)
	}
	if got := testutil.CollectAndCount(m.hopSetup); got != 1 {
		t.Errorf("hop_setup_seconds series = %d", got)
	}
	if got := testutil.ToFloat64(m.bytes.WithLabelValues("out")); got <= 0 {
		t.Errorf("bytes_total{out} = %v", got)
	}

	var records []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(audit.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		records = append(records, r)
	}
	if len(records) != 2 {
		t.Fatalf("want 2 audit records (one per authenticated connection), got %d:\n%s", len(records), audit.String())
	}
	host, port, _ := net.SplitHostPort(target)
	wantForward := fmt.Sprintf("direct-tcpip %s", net.JoinHostPort(host, port))
	for i, r := range records {
		if r["vps"] != v.TaskID || r["key_fingerprint"] != key.auth.Fingerprint || r["owner"] != "alice" || r["route"] != "username" {
			t.Errorf("record %d lacks who/what: %v", i, r)
		}
	}
	// The gateway's own log says the same once per connection, with each
	// key once: a record whose keys repeat reads differently to different
	// JSON parsers (most keep the last).
	ended := 0
	for _, line := range strings.Split(strings.TrimSpace(g.logs.String()), "\n") {
		if !strings.Contains(line, `"msg":"session ended"`) {
			continue
		}
		ended++
		if dup := repeatedKeys(t, line); len(dup) > 0 {
			t.Errorf("session ended record repeats %v: %s", dup, line)
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if r["vps"] != v.TaskID || r["login_user"] != loginUser(t) || r["key_fingerprint"] != key.auth.Fingerprint {
			t.Errorf("session ended record lacks who/what: %s", line)
		}
	}
	if ended != 2 {
		t.Errorf("want 2 session ended records in the gateway's log, got %d", ended)
	}
	for i, r := range records {
		if r["login_user"] != loginUser(t) || r["conn_id"] == nil {
			t.Errorf("audit record %d lacks login_user or conn_id: %v", i, r)
		}
	}
	for i, line := range strings.Split(strings.TrimSpace(audit.String()), "\n") {
		if dup := repeatedKeys(t, line); len(dup) > 0 {
			t.Errorf("audit record %d repeats %v: %s", i, dup, line)
		}
	}
	if fw, _ := records[0]["forwards"].([]any); len(fw) != 1 || fw[0] != wantForward {
		t.Errorf("first record forwards = %v, want [%s]", records[0]["forwards"], wantForward)
	}
	if ex, _ := records[1]["exit"].([]any); len(ex) != 1 || ex[0] != "status "+strconv.Itoa(4) {
		t.Errorf("second record exit = %v, want [status 4]", records[1]["exit"])
	}
}

// repeatedKeys returns the top-level keys that occur more than once in the
// JSON object line.
func repeatedKeys(t testing.TB, line string) []string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %q", line)
	}
	seen := map[string]bool{}
	var repeated []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		key := tok.(string)
		if seen[key] {
			repeated = append(repeated, key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
	}
	return repeated
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReloadLimits: new limits apply to the next channel of a live
// connection, and open channels are untouched.
func TestReloadLimits(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.MaxChannels = 2 })
	key := newUserKey(t)
	g.addVPS(t, "reload", 0, key)
	target := echoServer(t)
	client := dialGo(t, g, key, "reload")
	var open []net.Conn
	for i := 0; i < 2; i++ {
		c, err := client.Dial("tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	if _, err := client.Dial("tcp", target); err == nil || !strings.Contains(err.Error(), "limit 2") {
		t.Fatalf("third channel: %v, want the limit refusal", err)
	}
	g.srv.Reload(Limits{MaxChannels: 3})
	c, err := client.Dial("tcp", target)
	if err != nil {
		t.Fatalf("after reload: %v", err)
	}
	open = append(open, c)
	for _, c := range open {
		expectEcho(t, func() (net.Conn, error) { return c, nil })
		c.Close()
	}
}

// TestShutdownDrainsThenTells: while Shutdown drains, sessions already open
// go on working (one is fed and finishes after the listener has closed);
// when the drain time ends, those still open are told why and closed. No
// step depends on how long anything takes: the drain ends when the test
// cancels it.
func TestShutdownDrainsThenTells(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "drain", 0, key)
	addr := g.srv.Addr().String()
	short := dialGo(t, g, key, "drain")
	long := dialGo(t, g, key, "drain")
	shortSess, err := short.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	longSess, err := long.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	shortIn, err := shortSess.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var shortOut bytes.Buffer
	shortSess.Stdout = &shortOut
	var longErr strings.Builder
	longSess.Stderr = &longErr
	if err := shortSess.Start("read line; echo finished $line"); err != nil {
		t.Fatal(err)
	}
	if err := longSess.Start("sleep 60"); err != nil {
		t.Fatal(err)
	}
	longDone := make(chan error, 1)
	go func() { longDone <- longSess.Wait() }()

	// The drain lasts until the test cancels it (a minute bounds a hang).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- g.srv.Shutdown(ctx) }()
	// Draining: the listener refuses new connections.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if i == 300 {
			t.Fatal("the gateway still accepts connections after Shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}

	if _, err := io.WriteString(shortIn, "now\n"); err != nil {
		t.Fatalf("writing to a session while draining: %v", err)
	}
	if err := shortSess.Wait(); err != nil {
		t.Fatalf("a session that finished while draining was cut: %v", err)
	}
	if got := shortOut.String(); got != "finished now\n" {
		t.Fatalf("the session that finished while draining said %q", got)
	}
	select {
	case err := <-longDone:
		t.Fatalf("the long session ended before the drain did: %v", err)
	default:
	}

	cancel() // the drain time is over
	select {
	case <-longDone:
	case <-time.After(30 * time.Second): // a hang detector, not a timing check
		t.Fatal("the long session was not closed after the drain time")
	}
	if !strings.Contains(longErr.String(), "the gateway is shutting down") {
		t.Fatalf("the long session was not told why: %q", longErr.String())
	}
	if err := <-shutdownDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown cut short by its context returned %v; want context.Canceled", err)
	}
}

// TestShutdownWithStalledClient: a client that stopped reading (its window
// is used up, so the shutdown notice cannot be written) must not keep
// Shutdown from closing the gateway.
func TestShutdownWithStalledClient(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "stall", 0, key)
	client := dialGo(t, g, key, "stall")
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe() // never read
	if err != nil {
		t.Fatal(err)
	}
	_ = stdout
	if err := sess.Start("yes"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // yes fills the 2 MiB window in far less

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- g.srv.Shutdown(ctx) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second): // a hang detector, not a timing check
		t.Fatal("Shutdown hung on a client that stopped reading")
	}
	if n := g.srv.ActiveConns(); n != 0 {
		t.Fatalf("%d connections left after Shutdown", n)
	}
}
