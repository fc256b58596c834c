package gateway

// Channel and global requests through the gateway, judged against the same
// requests sent straight to the same sshd with a certificate from the
// gateway's CA: whatever the sshd answers directly, the client must get
// through the gateway, except for the two host key requests the gateway
// handles itself; exit-status must keep its place before EOF. Also the
// per-connection channel limit (the forward limit is in x11_test.go, with
// the other channels the VPS opens).

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// certAuth logs in to a VPS's sshd the way the hop does: a fresh key and a
// user certificate for login signed by ca (see hopCertificate).
func certAuth(t testing.TB, ca gossh.Signer, login string) gossh.AuthMethod {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cert := &gossh.Certificate{
		Key: signer.PublicKey(), CertType: gossh.UserCert, KeyId: "test direct login",
		ValidPrincipals: []string{login},
		ValidAfter:      uint64(now.Add(-2 * time.Minute).Unix()),
		ValidBefore:     uint64(now.Add(10 * time.Minute).Unix()),
		Permissions: gossh.Permissions{Extensions: map[string]string{
			"permit-pty": "", "permit-port-forwarding": "", "permit-agent-forwarding": "",
			"permit-X11-forwarding": "", "permit-user-rc": "",
		}},
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	cs, err := gossh.NewCertSigner(cert, signer)
	if err != nil {
		t.Fatal(err)
	}
	return gossh.PublicKeys(cs)
}

// endpoint is one way to reach a VPS: straight to its sshd, or through the
// gateway. dial returns a connection whose global requests (reqs) the caller
// must drain; channels opened toward the client are refused.
type endpoint struct {
	name string
	dial func(t testing.TB, clientVersion string) (gossh.Conn, <-chan gossh.NewChannel, <-chan *gossh.Request)
}

func endpoints(g *testGateway, d *sshd, key userKey, vpsName string) []endpoint {
	dial := func(t testing.TB, addr string, cfg *gossh.ClientConfig) (gossh.Conn, <-chan gossh.NewChannel, <-chan *gossh.Request) {
		t.Helper()
		nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Timeout = 10 * time.Second
		c, chans, reqs, err := gossh.NewClientConn(nc, addr, cfg)
		if err != nil {
			nc.Close()
			t.Fatalf("dial %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
		return c, chans, reqs
	}
	vpsKey, _, _, _, _ := gossh.ParseAuthorizedKey([]byte(d.hostKey))
	var gwKeys []gossh.PublicKey
	for _, h := range g.hostKeys {
		gwKeys = append(gwKeys, h.PublicKey())
	}
	return []endpoint{
		{name: "direct", dial: func(t testing.TB, v string) (gossh.Conn, <-chan gossh.NewChannel, <-chan *gossh.Request) {
			return dial(t, d.addr, &gossh.ClientConfig{
				User: loginUser(t), Auth: []gossh.AuthMethod{certAuth(t, g.ca, loginUser(t))}, ClientVersion: v,
				HostKeyCallback: gossh.FixedHostKey(vpsKey), HostKeyAlgorithms: []string{vpsKey.Type()},
			})
		}},
		{name: "gateway", dial: func(t testing.TB, v string) (gossh.Conn, <-chan gossh.NewChannel, <-chan *gossh.Request) {
			return dial(t, g.srv.Addr().String(), &gossh.ClientConfig{
				User: vpsName, Auth: []gossh.AuthMethod{gossh.PublicKeys(key.signer)}, ClientVersion: v,
				HostKeyCallback: pinnedHostKey(gwKeys),
			})
		}},
	}
}

// newClientOwnReqs is gossh.NewClient for a connection whose global requests
// the test reads itself.
func newClientOwnReqs(c gossh.Conn, chans <-chan gossh.NewChannel) *gossh.Client {
	none := make(chan *gossh.Request)
	close(none)
	return gossh.NewClient(c, chans, none)
}

// within runs f and fails the test if it has not returned by the deadline
// (a request that is never answered would hang the test otherwise).
func within[T any](t testing.TB, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no answer", what)
		panic("unreachable")
	}
}

type ptyRequest struct {
	Term             string
	Cols, Rows, W, H uint32
	Modes            string
}

// sessionReply opens a session (with a pty if asked), runs cat in it and
// returns the sshd's reply to one more request.
func sessionReply(t testing.TB, c gossh.Conn, pty bool, reqType string, payload []byte) bool {
	t.Helper()
	ch, reqs, err := c.OpenChannel("session", nil)
	if err != nil {
		t.Fatalf("open session: %v", err)
	}
	defer ch.Close()
	go gossh.DiscardRequests(reqs)
	go io.Copy(io.Discard, ch)          //nolint:errcheck
	go io.Copy(io.Discard, ch.Stderr()) //nolint:errcheck
	if pty {
		if ok, err := ch.SendRequest("pty-req", true, gossh.Marshal(ptyRequest{Term: "xterm", Cols: 80, Rows: 24, Modes: "\x00"})); !ok || err != nil {
			t.Fatalf("pty-req: %v %v", ok, err)
		}
	}
	// cat ends when the channel closes (stdin EOF, or SIGHUP with a pty):
	// nothing outlives the test.
	if ok, err := ch.SendRequest("exec", true, gossh.Marshal(struct{ Cmd string }{"cat"})); !ok || err != nil {
		t.Fatalf("exec: %v %v", ok, err)
	}
	return within(t, reqType, func() bool {
		ok, err := ch.SendRequest(reqType, true, payload)
		return ok && err == nil
	})
}

func TestSessionRequestsMatchDirect(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	_, d := g.addVPS(t, "reqs", 0, key)
	yes, no := true, false
	tests := []struct {
		name    string
		pty     bool
		req     string
		payload []byte
		want    *bool // the sshd's own answer where it does not depend on the login user
	}{
		// sshd refuses signals for root sessions ("requires privilege
		// separation") and performs them for other users: compare only.
		{name: "signal", req: "signal", payload: gossh.Marshal(struct{ Name string }{"TERM"})},
		{name: "signal with pty", pty: true, req: "signal", payload: gossh.Marshal(struct{ Name string }{"INT"})},
		{name: "break with pty", pty: true, req: "break", payload: gossh.Marshal(struct{ Ms uint32 }{100}), want: &yes},
		{name: "break without pty", req: "break", payload: gossh.Marshal(struct{ Ms uint32 }{100}), want: &no},
		{name: "xon-xoff", pty: true, req: "xon-xoff", payload: gossh.Marshal(struct{ CanDo bool }{true}), want: &no},
		{name: "window-change", pty: true, req: "window-change", payload: gossh.Marshal(struct{ C, R, W, H uint32 }{100, 40, 0, 0}), want: &yes},
		{name: "env not accepted", req: "env", payload: gossh.Marshal(struct{ K, V string }{"KOHAKU_TEST", "1"}), want: &no},
		{name: "unknown request", req: "kohakuriver-test@example.com", want: &no},
	}
	conns := map[string]gossh.Conn{}
	for _, ep := range endpoints(g, d, key, "reqs") {
		c, chans, reqs := ep.dial(t, "")
		go gossh.DiscardRequests(reqs)
		go rejectChannels(chans)
		conns[ep.name] = c
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			direct := sessionReply(t, conns["direct"], tt.pty, tt.req, tt.payload)
			via := sessionReply(t, conns["gateway"], tt.pty, tt.req, tt.payload)
			if tt.want != nil && direct != *tt.want {
				t.Fatalf("sshd answered %v directly, the test expects %v: fix the table", direct, *tt.want)
			}
			t.Logf("sshd answers %v", direct)
			if via != direct {
				t.Fatalf("%s: %v through the gateway, %v directly", tt.req, via, direct)
			}
		})
	}
}

func rejectChannels(chans <-chan gossh.NewChannel) {
	for nc := range chans {
		_ = nc.Reject(gossh.Prohibited, "test client")
	}
}

func TestGlobalRequestsMatchDirect(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	_, d := g.addVPS(t, "global", 0, key)
	vpsKey, _, _, _, _ := gossh.ParseAuthorizedKey([]byte(d.hostKey))
	tests := []struct {
		name       string
		req        string
		payload    []byte
		local      bool // refused by the gateway itself, never relayed
		wantDirect bool // the sshd's answer, for local ones
	}{
		{name: "keepalive", req: "keepalive@openssh.com"},
		{name: "unknown global request", req: "kohakuriver-test@example.com"},
		// The sshd proves it holds its keys; the gateway must not let a
		// client learn or pin them.
		{name: "hostkeys-prove refused", req: reqHostKeysProve, payload: gossh.Marshal(struct{ Blob []byte }{vpsKey.Marshal()}),
			local: true, wantDirect: true},
	}
	type reply struct {
		ok  bool
		err error
	}
	got := map[string]map[string]bool{}
	for _, ep := range endpoints(g, d, key, "global") {
		c, chans, reqs := ep.dial(t, "")
		go gossh.DiscardRequests(reqs)
		go rejectChannels(chans)
		got[ep.name] = map[string]bool{}
		for _, tt := range tests {
			// want-reply true: a request that is swallowed would hang here.
			r := within(t, ep.name+" "+tt.req, func() reply {
				ok, _, err := c.SendRequest(tt.req, true, tt.payload)
				return reply{ok, err}
			})
			if r.err != nil {
				t.Fatalf("%s %s: %v", ep.name, tt.req, r.err)
			}
			got[ep.name][tt.name] = r.ok
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			direct, via := got["direct"][tt.name], got["gateway"][tt.name]
			want := direct
			if tt.local {
				if direct != tt.wantDirect {
					t.Fatalf("sshd answered %v directly, the test expects %v", direct, tt.wantDirect)
				}
				want = false
			}
			if via != want {
				t.Fatalf("%s: %v through the gateway, want %v (sshd directly: %v)", tt.req, via, want, direct)
			}
		})
	}
}

// TestHostKeysAnnouncementNotRelayed: sshd announces its host keys
// (hostkeys-00@openssh.com) right after auth to every client it does not
// list as unable to cope (compat.c, SSH_BUG_HOSTKEYS: Cisco-1.*, old
// TeraTerm), whatever its version says otherwise, so to the hop
// (hopClientVersion) too. The direct cases prove it sends it;
// through the gateway the client must never see it. ClientAliveInterval
// makes the sshd send keepalive@openssh.com later on the same ordered stream,
// which the gateway does relay: once it arrived, an announcement relayed
// before it would have arrived too.
func TestHostKeysAnnouncementNotRelayed(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	_, d := g.addVPSConfigured(t, "hk", "ClientAliveInterval 1", key)
	eps := endpoints(g, d, key, "hk")
	tests := []struct {
		name         string
		ep           endpoint
		version      string
		wantHostKeys bool
	}{
		{name: "direct, OpenSSH client", ep: eps[0], version: "SSH-2.0-OpenSSH_9.2p1", wantHostKeys: true},
		{name: "direct, the hop's version", ep: eps[0], version: hopClientVersion, wantHostKeys: true},
		{name: "through the gateway, OpenSSH client", ep: eps[1], version: "SSH-2.0-OpenSSH_9.2p1", wantHostKeys: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, chans, reqs := tt.ep.dial(t, tt.version)
			client := newClientOwnReqs(c, chans)
			if err := within(t, "session", func() error { return runSession(client, "echo done") }); err != nil {
				t.Fatalf("session: %v", err)
			}
			var seen []string
			deadline := time.After(20 * time.Second)
			for len(seen) == 0 || seen[len(seen)-1] != "keepalive@openssh.com" {
				select {
				case req, ok := <-reqs:
					if !ok {
						t.Fatalf("connection ended; requests seen: %v", seen)
					}
					seen = append(seen, req.Type)
					if req.WantReply {
						_ = req.Reply(false, nil)
					}
				case <-deadline:
					t.Fatalf("no keepalive from the sshd; requests seen: %v", seen)
				}
			}
			gotHostKeys := false
			for _, s := range seen {
				gotHostKeys = gotHostKeys || s == reqHostKeys
			}
			if gotHostKeys != tt.wantHostKeys {
				t.Fatalf("global requests seen %v: hostkeys-00 present = %v, want %v", seen, gotHostKeys, tt.wantHostKeys)
			}
		})
	}
}

// runSession runs cmd and checks it printed "done".
func runSession(client *gossh.Client, cmd string) error {
	s, err := client.NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	out, err := s.Output(cmd)
	if err == nil && string(out) != "done\n" {
		err = fmt.Errorf("output %q", out)
	}
	return err
}

// TestNoMoreSessions: after no-more-sessions@openssh.com, sshd treats a new
// session as an attack and drops the connection; through the gateway, which
// enforces the request itself, the client sees the same: no session, and
// the connection ends.
func TestNoMoreSessions(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	_, d := g.addVPS(t, "nomore", 0, key)
	for _, ep := range endpoints(g, d, key, "nomore") {
		// OpenSSH's client sends it without want-reply; then a keepalive
		// with want-reply orders it before the next channel open on the
		// direct path (x/crypto hands requests and channels over apart).
		for _, wantReply := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s want-reply=%v", ep.name, wantReply), func(t *testing.T) {
				c, chans, reqs := ep.dial(t, "")
				go gossh.DiscardRequests(reqs)
				client := newClientOwnReqs(c, chans)
				if err := within(t, "first session", func() error { return runSession(client, "echo done") }); err != nil {
					t.Fatalf("first session: %v", err)
				}
				ok, _, err := c.SendRequest("no-more-sessions@openssh.com", wantReply, nil)
				if err != nil || (wantReply && !ok) {
					t.Fatalf("no-more-sessions: %v %v", ok, err)
				}
				if !wantReply {
					within(t, "keepalive", func() error { _, _, err := c.SendRequest("keepalive@openssh.com", true, nil); return err })
				}
				err = within(t, "second session", func() error {
					s2, err := client.NewSession()
					if err == nil {
						s2.Close()
					}
					return err
				})
				if err == nil {
					t.Fatal("a session opened after no-more-sessions")
				}
				t.Logf("second session: %v", err)
				within(t, "connection end", func() error { return c.Wait() })
			})
		}
	}
}

func TestChannelLimit(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.MaxChannels = 5 })
	key := newUserKey(t)
	g.addVPS(t, "lim", 0, key)
	client := dialGo(t, g, key, "lim")
	var open []*gossh.Session
	for i := 0; i < 5; i++ {
		s, err := client.NewSession()
		if err != nil {
			t.Fatalf("session %d: %v", i+1, err)
		}
		if _, err := s.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := s.Start("cat"); err != nil { // runs until its channel closes
			t.Fatal(err)
		}
		open = append(open, s)
	}
	_, _, err := client.OpenChannel("session", nil)
	var oce *gossh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage || !strings.Contains(oce.Message, "limit 5") {
		t.Fatalf("6th channel: %v; want a resource shortage naming the limit", err)
	}
	open[0].Close()
	// The slot is free once the VPS confirmed the close: retry until then.
	deadline := time.Now().Add(15 * time.Second)
	for {
		s, err := client.NewSession()
		if err == nil {
			out, err := s.Output("echo done")
			if err != nil || string(out) != "done\n" {
				t.Fatalf("session after a close: %q %v", out, err)
			}
			return
		}
		if !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage || time.Now().After(deadline) {
			t.Fatalf("no session after closing one: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestExitStatusBeforeEOF: PuTTY and Dropbear's client answer the server's
// EOF with their own CLOSE at once; x/crypto on the gateway confirms that
// CLOSE by itself, so an exit-status the gateway relays after EOF is lost
// and the client reports 0 for a failed command. sshd may send EOF before
// exit-status but never closes a session before it; directly (the same key
// added to the sshd's authorized_keys) the clients get every status right.
func TestExitStatusBeforeEOF(t *testing.T) {
	const runs, cmd = 40, "echo out; exit 3"
	// One sshd behind two gateways: the default ciphers for plink, the
	// compatible ones for dbclient (see clients_test.go).
	gw := newTestGateway(t, nil)
	gwCompat := newTestGateway(t, func(c *Config) { c.Ciphers = CompatCiphers() })
	key := newUserKey(t)
	_, d := gw.addVPS(t, "st", 0, key)
	gwCompat.registerUpstream(t, "st", d.addr, []string{d.hostKey}, key)
	f, err := os.OpenFile(filepath.Join(d.dir, "authorized_keys"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(f, "%s\n%s\n", CertAuthorityLine(gwCompat.ca.PublicKey()), key.auth.Line)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, sshdPort, _ := net.SplitHostPort(d.addr)
	sshdKey, _, _, _, _ := gossh.ParseAuthorizedKey([]byte(d.hostKey))

	type target struct{ name, user, host, port string }
	clients := []struct {
		name string
		bins []string
		g    *testGateway
		argv func(t *testing.T, g *testGateway, to target) (env []string, args []string)
	}{
		{name: "plink", bins: []string{"plink", "puttygen"}, g: gw, argv: func(t *testing.T, g *testGateway, to target) ([]string, []string) {
			fps := []string{gossh.FingerprintSHA256(sshdKey)}
			if to.name == "gateway" {
				fps = g.gatewayFingerprints()
			}
			args := []string{"-batch", "-ssh", "-P", to.port, "-i", puttyKey(t, key)}
			for _, fp := range fps {
				args = append(args, "-hostkey", fp)
			}
			return puttyEnv(t), append(args, to.user+"@"+to.host, cmd)
		}},
		{name: "dbclient", bins: []string{"dbclient", "dropbearconvert"}, g: gwCompat, argv: func(t *testing.T, g *testGateway, to target) ([]string, []string) {
			// dbclient's known_hosts ignores ports and stops at the first
			// key of a type for a name: the sshd is "localhost".
			home := g.dropbearHome(t)
			kh, err := os.OpenFile(filepath.Join(home, ".ssh", "known_hosts"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = fmt.Fprintln(kh, "localhost "+d.hostKey)
			kh.Close()
			if err != nil {
				t.Fatal(err)
			}
			return []string{"HOME=" + home}, []string{"-i", dropbearKey(t, key), "-p", to.port, to.user + "@" + to.host, cmd}
		}},
	}
	for _, cl := range clients {
		targets := []target{{"direct", loginUser(t), "localhost", sshdPort}, {"gateway", "st", "127.0.0.1", strconv.Itoa(cl.g.port())}}
		for _, to := range targets {
			t.Run(cl.name+" "+to.name, func(t *testing.T) {
				requireTools(t, cl.bins...)
				env, args := cl.argv(t, cl.g, to)
				wrong := 0
				for i := 0; i < runs; i++ {
					out, errOut, code := runTool(t, env, nil, cl.name, args...)
					if out != "out\n" {
						t.Fatalf("run %d: stdout %q stderr %q status %d", i, out, errOut, code)
					}
					if code != 3 {
						wrong++
					}
				}
				if wrong != 0 {
					t.Fatalf("%s reported the wrong exit status in %d of %d runs", cl.name, wrong, runs)
				}
			})
		}
	}
}
