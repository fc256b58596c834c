package gateway

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

func TestExecThroughGateway(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	v, d := g.addVPS(t, "box", 0, key)

	tests := []struct {
		name       string
		user       string
		cmd        string
		stdin      string
		wantOut    string
		wantErr    string
		wantStatus int
	}{
		{name: "task id route", user: v.TaskID, cmd: "echo hello", wantOut: "hello\n"},
		{name: "name route", user: "box", cmd: "echo named", wantOut: "named\n"},
		{name: "login@task route", user: loginUser(t) + "@" + v.TaskID, cmd: "id -un", wantOut: loginUser(t) + "\n"},
		{name: "exit status", user: "box", cmd: "exit 7", wantStatus: 7},
		{name: "stderr kept apart", user: "box", cmd: "echo out; echo err >&2; exit 3", wantOut: "out\n", wantErr: "err\n", wantStatus: 3},
		{name: "stdin", user: "box", cmd: "tr a-z A-Z", stdin: "shout\n", wantOut: "SHOUT\n"},
		{name: "output after exit status", user: "box", cmd: "seq 1 20000 | tail -n 1", wantOut: "20000\n"},
		// startSSHD's SetEnv: the machine's rc files stay out of the tests.
		{name: "the test sshd's HOME", user: "box", cmd: "echo $HOME", wantOut: filepath.Join(d.dir, "home") + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdin []byte
			if tt.stdin != "" {
				stdin = []byte(tt.stdin)
			}
			out, errOut, code := runSSH(t, stdin, g.sshArgs(key, g.port(), tt.user+"@127.0.0.1", tt.cmd)...)
			if out != tt.wantOut || code != tt.wantStatus || (tt.wantErr != "" && errOut != tt.wantErr) {
				t.Fatalf("got stdout %q stderr %q status %d; want stdout %q stderr %q status %d", out, errOut, code, tt.wantOut, tt.wantErr, tt.wantStatus)
			}
		})
	}
}

func TestBulkRoundTripChecksummed(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "bulk", 0, key)
	data := make([]byte, 100<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])

	// Upload: the VPS checksums what it got.
	out, errOut, code := runSSH(t, data, g.sshArgs(key, g.port(), "bulk@127.0.0.1", "sha256sum")...)
	if code != 0 || !strings.HasPrefix(out, want) {
		t.Fatalf("upload: status %d stdout %q stderr %q, want sum %s", code, out, errOut, want)
	}
	// Round trip: what comes back is byte-identical.
	cmd := execSSH(g.sshArgs(key, g.port(), "bulk@127.0.0.1", "cat")...)
	cmd.Stdin = bytes.NewReader(data)
	got, err := cmd.Output()
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if gs := sha256.Sum256(got); gs != sum {
		t.Fatalf("round trip: got %d bytes with a different checksum", len(got))
	}
}

func TestRoutesAndDenials(t *testing.T) {
	g := newTestGateway(t, nil)
	keyA, keyB, keyC := newUserKey(t), newUserKey(t), newUserKey(t)
	portA, portB := freePort(t), freePort(t)
	vA, _ := g.addVPS(t, "alpha", portA, keyA, keyC)
	vB, _ := g.addVPS(t, "beta", portB, keyB, keyC)
	waitPortListening(t, g.srv, portA)
	waitPortListening(t, g.srv, portB)
	me := loginUser(t)

	tests := []struct {
		name     string
		key      userKey
		port     int
		user     string
		wantHost string // VPS reached (its task id), "" = refused
		wantMsg  string // refusal text on stderr
		notSay   string // what the refusal must not reveal
		also     userKey
	}{
		{name: "A by name", key: keyA, user: "alpha", wantHost: vA.TaskID},
		{name: "A by port", key: keyA, port: portA, user: me, wantHost: vA.TaskID},
		{name: "A by key", key: keyA, user: me, wantHost: vA.TaskID},
		{name: "B by key", key: keyB, user: me, wantHost: vB.TaskID},
		// A key that does not open the named VPS is refused, so the
		// client goes on to its next key.
		{name: "key of B on A's name", key: keyB, user: "alpha", wantMsg: `does not open VPS "alpha"`},
		{name: "keys of B then A on A's name", key: keyB, also: keyA, user: "alpha", wantHost: vA.TaskID},
		{name: "key of B on a name no VPS has", key: keyB, user: "gamma", wantMsg: `the sshd of VPS beta refused the login as "gamma"`},
		// A stranger reads the same whether the name is a VPS's or not.
		{name: "stranger on A's name", key: newUserKey(t), user: "alpha", wantMsg: `this key opens no running VPS, and "alpha" names none it opens`},
		{name: "stranger on a name no VPS has", key: newUserKey(t), user: "gamma", wantMsg: `this key opens no running VPS, and "gamma" names none it opens`},
		// A stranger learns no VPS's name from a refusal: on a port it
		// names the port, by task id the task id.
		{name: "key of B on A's port", key: keyB, port: portA, user: me, wantMsg: fmt.Sprintf("does not open the VPS on port %d", portA), notSay: "alpha"},
		{name: "key of A on B's task id", key: keyA, user: me + "@" + vB.TaskID, wantMsg: fmt.Sprintf("does not open VPS %q", vB.TaskID), notSay: "beta"},
		{name: "shared key by key route is ambiguous", key: keyC, user: me, wantMsg: "opens several VPSs"},
		{name: "shared key by name", key: keyC, user: "beta", wantHost: vB.TaskID},
		{name: "unknown task", key: keyA, user: "root@1234567890123456789", wantMsg: "no such VPS"},
		{name: "unknown key", key: newUserKey(t), user: me, wantMsg: "opens no running VPS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := tt.port
			if port == 0 {
				port = g.port()
			}
			// The VPS tells us who it is through an env-free marker: the
			// task id is written into each sshd's dir, but simpler: ask the
			// gateway-injected cert's KeyId is not visible; use the sshd
			// authorized_keys path which is per-VPS.
			var extra []string
			if tt.also.path != "" {
				extra = []string{"-i", tt.also.path} // offered after tt.key
			}
			out, errOut, code := runSSH(t, nil, g.sshArgs(tt.key, port, append(extra, tt.user+"@127.0.0.1", "echo $SSH_CONNECTION")...)...)
			if tt.wantHost == "" {
				if code == 0 {
					t.Fatalf("login succeeded (stdout %q), want refusal", out)
				}
				if !strings.Contains(errOut, tt.wantMsg) {
					t.Fatalf("stderr %q does not explain the refusal (want %q)", errOut, tt.wantMsg)
				}
				if tt.notSay != "" && strings.Contains(errOut, tt.notSay) {
					t.Fatalf("stderr %q reveals %q", errOut, tt.notSay)
				}
				return
			}
			if code != 0 {
				t.Fatalf("status %d, stderr %q", code, errOut)
			}
			g.hop.mu.Lock()
			addr := g.hop.addrs[tt.wantHost]
			g.hop.mu.Unlock()
			// SSH_CONNECTION's last two fields are the sshd's address.
			f := strings.Fields(out)
			if len(f) != 4 || f[2]+":"+f[3] != addr {
				t.Fatalf("reached %q, want the sshd of %s at %s", out, tt.wantHost, addr)
			}
		})
	}
}

func TestStoppedVPSExplains(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	v, _ := g.addVPS(t, "sleepy", 0, key)
	g.dir.update(v.TaskID, func(v *store.VPS) { v.Status = store.StatusStopped })
	_, errOut, code := runSSH(t, nil, g.sshArgs(key, g.port(), "sleepy@127.0.0.1", "true")...)
	if code != 255 || !strings.Contains(errOut, "VPS sleepy is stopped") || !strings.Contains(errOut, "kohakuriver vps start sleepy") {
		t.Fatalf("status %d stderr %q; want 255 and the stopped message", code, errOut)
	}
}

func TestChangedHostKeyRefused(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	v, _ := g.addVPS(t, "pinned", 0, key)
	other := newUserKey(t) // any other ed25519 key stands in for a new host key
	g.dir.update(v.TaskID, func(v *store.VPS) { v.HostKeys = []string{other.auth.Line} })
	_, errOut, code := runSSH(t, nil, g.sshArgs(key, g.port(), "pinned@127.0.0.1", "true")...)
	if code != 255 || !strings.Contains(errOut, "host key of VPS pinned does not match") {
		t.Fatalf("status %d stderr %q; want the host key refusal", code, errOut)
	}
	if !strings.Contains(g.logs.String(), "vps host key mismatch") {
		t.Fatalf("log does not record the mismatch:\n%s", g.logs.String())
	}
}

func TestSCPAndSFTP(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	v, _ := g.addVPS(t, "files", 0, key)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.bin")
	data := make([]byte, 3<<20+17)
	_, _ = rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	remoteDir := t.TempDir() // the test sshd shares this machine's filesystem
	scpArgs := func(extra ...string) []string {
		a := g.sshArgs(key, 0)
		a = append(a, "-P", strconv.Itoa(g.port()))
		return append(a, extra...)
	}
	for _, mode := range []struct{ name, flag string }{{"legacy scp", "-O"}, {"sftp mode", "-s"}} {
		t.Run(mode.name, func(t *testing.T) {
			remote := filepath.Join(remoteDir, strings.ReplaceAll(mode.name, " ", "_"))
			_, errOut, code := runCmd(t, nil, "scp", scpArgs(mode.flag, src, "files@127.0.0.1:"+remote)...)
			if code != 0 {
				t.Fatalf("scp upload: %d %s", code, errOut)
			}
			if got, _ := os.ReadFile(remote); !bytes.Equal(got, data) {
				t.Fatalf("uploaded file differs (%d bytes)", len(got))
			}
			back := remote + ".back"
			_, errOut, code = runCmd(t, nil, "scp", scpArgs(mode.flag, v.TaskID+"@127.0.0.1:"+remote, back)...)
			if code != 0 {
				t.Fatalf("scp download: %d %s", code, errOut)
			}
			if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
				t.Fatalf("downloaded file differs (%d bytes)", len(got))
			}
		})
	}
	t.Run("sftp batch", func(t *testing.T) {
		batch := filepath.Join(dir, "batch")
		remote := filepath.Join(remoteDir, "via-sftp")
		script := fmt.Sprintf("put %s %s\nls -l %s\nget %s %s.back\nrm %s\n", src, remote, remote, remote, remote, remote)
		if err := os.WriteFile(batch, []byte(script), 0o600); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := runCmd(t, nil, "sftp", scpArgs("-b", batch, "files@127.0.0.1")...)
		if code != 0 {
			t.Fatalf("sftp: %d %s %s", code, out, errOut)
		}
		if got, _ := os.ReadFile(remote + ".back"); !bytes.Equal(got, data) {
			t.Fatalf("sftp get differs (%d bytes)", len(got))
		}
		if _, err := os.Stat(remote); !os.IsNotExist(err) {
			t.Fatalf("sftp rm did not remove the file: %v", err)
		}
	})
}
