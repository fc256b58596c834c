package gateway

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// TestAuthorizationMatrix: for N VPSs x M keys x every route (user name,
// VPS port, key alone), exactly the right pairs get in, and each lands in
// the right VPS.
func TestAuthorizationMatrix(t *testing.T) {
	const nVPS, nKeys = 4, 5
	g := newTestGateway(t, func(c *Config) { c.Throttle.MaxFailures = -1 })
	keys := make([]userKey, nKeys)
	for i := range keys {
		keys[i] = newUserKey(t)
	}
	// VPS i holds key i; key 4 is shared by VPS 0 and 1 (ambiguous for
	// key routing); VPS 3 is stopped (key routing skips it).
	holds := func(v, k int) bool { return k == v || (k == 4 && v <= 1) }
	type vpsInfo struct {
		v    store.VPS
		addr string
	}
	vpss := make([]vpsInfo, nVPS)
	for i := range vpss {
		var ks []userKey
		for k := range keys {
			if holds(i, k) {
				ks = append(ks, keys[k])
			}
		}
		port := freePort(t)
		v, d := g.addVPS(t, fmt.Sprintf("m%d", i), port, ks...)
		vpss[i] = vpsInfo{v: v, addr: d.addr}
		waitPortListening(t, g.srv, port)
	}
	g.dir.update(vpss[3].v.TaskID, func(v *store.VPS) { v.Status = store.StatusStopped })
	waitFor(t, "stopped VPS port to close", func() bool { return !g.srv.PortListening(vpss[3].v.SSHPort) })
	me := loginUser(t)

	// reached returns the index of the VPS a login reached, -1 if refused
	// at auth, -2 if admitted but the hop was refused (stopped VPS).
	reached := func(key userKey, addr, user string) int {
		client, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{
			User: user, Auth: []gossh.AuthMethod{gossh.PublicKeys(key.signer)},
			HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
		})
		if err != nil {
			return -1
		}
		defer client.Close()
		sess, err := client.NewSession()
		if err != nil {
			t.Fatalf("session: %v", err)
		}
		var stderr bytes.Buffer
		sess.Stderr = &stderr
		out, err := sess.Output("echo $SSH_CONNECTION")
		if err != nil {
			t.Logf("%s to %s: admitted, then: %v; stderr %q", user, addr, err, stderr.String())
			return -2
		}
		f := strings.Fields(string(out))
		for i, v := range vpss {
			if len(f) == 4 && f[2]+":"+f[3] == v.addr {
				return i
			}
		}
		t.Fatalf("reached an unknown sshd: %q", out)
		return 0
	}
	mainAddr := g.srv.Addr().String()
	for vi, v := range vpss {
		for ki, k := range keys {
			want := -1
			if holds(vi, ki) {
				want = vi
				if vi == 3 {
					want = -2 // admitted, then told the VPS is stopped
				}
			}
			for _, r := range []struct{ route, addr, user string }{
				{"username", mainAddr, v.v.TaskID},
				{"login@name", mainAddr, me + "@" + v.v.Name},
				{"port", net.JoinHostPort("127.0.0.1", strconv.Itoa(v.v.SSHPort)), me},
			} {
				want := want
				if vi == 3 && r.route == "port" {
					want = -1 // a stopped VPS's port is closed
				}
				if got := reached(k, r.addr, r.user); got != want {
					t.Errorf("vps %d key %d route %s: reached %d, want %d", vi, ki, r.route, got, want)
				}
			}
		}
	}
	// Key routing: only a key held by exactly one running VPS routes.
	for ki, k := range keys {
		want := -1
		switch ki {
		case 0, 1, 2:
			want = ki
		}
		if got := reached(k, mainAddr, me); got != want {
			t.Errorf("key %d by key route: reached %d, want %d", ki, got, want)
		}
	}
}
