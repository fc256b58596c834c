package gateway

// Dropbear as the VPS's sshd. Dropbear (2022.83) implements neither OpenSSH
// certificates nor cert-authority lines, so the hop falls back to the VPS's
// plain hop key (HopKeys), which the agent writes into authorized_keys next
// to the cert-authority line. Assumes dropbear-bin and util-linux's unshare.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// dropbear is a Dropbear server started by a test.
type dropbear struct {
	addr    string
	hostKey string // authorized_keys format
	// home stands in for the login user's home directory: the server runs
	// in a private mount namespace where it is bind-mounted over the real
	// one, so the test owns ~/.ssh/authorized_keys without touching the
	// machine's (Dropbear has no option for another file).
	home string
	log  *syncBuffer
}

// startDropbear runs Dropbear's server in the foreground on a free loopback
// port with an ed25519 host key and password logins off.
func startDropbear(t testing.TB) *dropbear {
	t.Helper()
	requireTools(t, "dropbear", "dropbearconvert", "unshare")
	if os.Geteuid() != 0 {
		// Bind-mounting over the home directory needs root; so does a
		// Dropbear that logs in as any user.
		t.Skip("the Dropbear upstream tests run as root (they bind-mount a home directory)")
	}
	dir := t.TempDir()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := gossh.NewSignerFromKey(priv)
	writeKey(t, filepath.Join(dir, "host_ed25519"), priv)
	mustRun(t, nil, "dropbearconvert", "openssh", "dropbear", filepath.Join(dir, "host_ed25519"), filepath.Join(dir, "host.dropbear"))
	d := &dropbear{
		addr:    "127.0.0.1:" + strconv.Itoa(freePort(t)),
		hostKey: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(signer.PublicKey()))),
		home:    t.TempDir(),
		log:     &syncBuffer{},
	}
	if err := os.Mkdir(filepath.Join(d.home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	realHome, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	// unshare and sh exec in turn, so the PID is Dropbear's own.
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" "$2" && shift 2 && exec dropbear "$@"`, "sh", d.home, realHome,
		"-F", "-E", "-s", "-p", d.addr, "-r", filepath.Join(dir, "host.dropbear"), "-P", filepath.Join(dir, "dropbear.pid"))
	cmd.Stderr = d.log
	// Dropbear forks a child per connection, which holds the log pipe:
	// kill the whole group, and do not wait on the pipe for long.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("dropbear log:\n%s", d.log.String())
		}
	})
	if err := waitBanner(d.addr, exited, 10*time.Second); err != nil {
		t.Fatalf("dropbear: %v\n%s", err, d.log.String())
	}
	return d
}

// authorize writes the login user's authorized_keys as the agent would.
func (d *dropbear) authorize(t testing.TB, lines ...string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(d.home, ".ssh", "authorized_keys"), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDropbearUpstream runs what users do through a VPS whose sshd is
// Dropbear: every subtest asserts the effect at the far end. (Dropbear's
// server has no X11 forwarding, so there is nothing to relay for it.)
func TestDropbearUpstream(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	d := startDropbear(t)
	v := g.registerUpstream(t, "dbvps", d.addr, []string{d.hostKey}, key)
	d.authorize(t, key.auth.Line, CertAuthorityLine(g.ca.PublicKey()), g.hopKeys.AuthorizedKeyLine(v.TaskID))
	const to = "dbvps@127.0.0.1"

	t.Run("exec", func(t *testing.T) {
		out, errOut, code := runSSH(t, nil, g.sshArgs(key, g.port(), to, "echo out; echo err >&2; exit 7")...)
		if code != 7 || out != "out\n" || !strings.Contains(errOut, "err") {
			t.Fatalf("status %d stdout %q stderr %q; want 7, out, err", code, out, errOut)
		}
		// The key Dropbear accepted is this VPS's hop key.
		fp := gossh.FingerprintSHA256(g.hopKeys.Signer(v.TaskID).PublicKey())
		if !strings.Contains(d.log.String(), fp) {
			t.Fatalf("dropbear's log does not name the hop key %s:\n%s", fp, d.log.String())
		}
	})

	t.Run("stdin", func(t *testing.T) {
		data := randomBytes(t, 8<<20)
		sum := sha256.Sum256(data)
		out, errOut, code := runSSH(t, data, g.sshArgs(key, g.port(), to, "sha256sum")...)
		if code != 0 || !strings.HasPrefix(out, hex.EncodeToString(sum[:])) {
			t.Fatalf("status %d stdout %q stderr %q; want the checksum of what was sent", code, out, errOut)
		}
	})

	t.Run("pty", func(t *testing.T) {
		out, errOut, code := runSSH(t, nil, g.sshArgs(key, g.port(), "-tt", to, "stty size; tty")...)
		if code != 0 || !strings.Contains(out, "/dev/pts/") {
			t.Fatalf("status %d stdout %q stderr %q; want a pty", code, out, errOut)
		}
	})

	t.Run("scp and sftp", func(t *testing.T) {
		data := randomBytes(t, 1<<20)
		local := filepath.Join(t.TempDir(), "up.bin")
		if err := os.WriteFile(local, data, 0o600); err != nil {
			t.Fatal(err)
		}
		remote := filepath.Join(t.TempDir(), "remote.bin") // same filesystem: Dropbear runs here
		scpArgs := append(g.sshArgs(key, 0, "-O", "-P", strconv.Itoa(g.port())), local, to+":"+remote)
		if out, errOut, code := runCmd(t, nil, "scp", scpArgs...); code != 0 {
			t.Fatalf("scp -O: %d %s %s", code, out, errOut)
		}
		if got, _ := os.ReadFile(remote); !bytes.Equal(got, data) {
			t.Fatalf("scp -O wrote %d bytes, want the %d sent", len(got), len(data))
		}
		back := filepath.Join(t.TempDir(), "down.bin")
		batch := filepath.Join(t.TempDir(), "batch")
		if err := os.WriteFile(batch, []byte("get "+remote+" "+back+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		sftpArgs := append(g.sshArgs(key, 0, "-P", strconv.Itoa(g.port()), "-b", batch), to)
		if out, errOut, code := runCmd(t, nil, "sftp", sftpArgs...); code != 0 {
			t.Fatalf("sftp: %d %s %s", code, out, errOut)
		}
		if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
			t.Fatalf("sftp get returned %d bytes, want %d", len(got), len(data))
		}
	})

	t.Run("local forward", func(t *testing.T) {
		target := echoServer(t)
		local := freePort(t)
		startSSH(t, g.sshArgs(key, g.port(), "-N", "-o", "ExitOnForwardFailure=yes",
			"-L", fmt.Sprintf("127.0.0.1:%d:%s", local, target), to)...)
		for i := 0; i < 3; i++ {
			expectEcho(t, func() (net.Conn, error) { return net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(local)) })
		}
	})

	t.Run("remote forward", func(t *testing.T) {
		target := echoServer(t)
		_, errb := startSSH(t, g.sshArgs(key, g.port(), "-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:"+target, to)...)
		port := allocatedPort(t, errb)
		expectEcho(t, func() (net.Conn, error) { return net.Dial("tcp", "127.0.0.1:"+port) })
	})

	t.Run("stdio forward", func(t *testing.T) {
		target := echoServer(t)
		out, errOut, code := runSSH(t, []byte("one\n"), g.sshArgs(key, g.port(), "-W", target, to)...)
		if code != 0 || out != "echo:one\n" {
			t.Fatalf("ssh -W: status %d stdout %q stderr %q", code, out, errOut)
		}
	})

	t.Run("agent", func(t *testing.T) {
		args := withAgent(g.sshArgs(key, g.port(), "-A", to, "ssh-add -l"), startAgent(t, key))
		out, errOut, code := runSSH(t, nil, args...)
		if code != 0 || !strings.Contains(out, key.auth.Fingerprint) {
			t.Fatalf("ssh -A ssh-add -l: status %d stdout %q stderr %q; want %s", code, out, errOut, key.auth.Fingerprint)
		}
	})

	t.Run("exit signal", func(t *testing.T) {
		client := dialGo(t, g, key, "dbvps")
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		var stdout bytes.Buffer
		sess.Stdout = &stdout
		err = sess.Run("echo before; kill -TERM $$")
		ee, ok := err.(*gossh.ExitError)
		if !ok || ee.Signal() != "TERM" || stdout.String() != "before\n" {
			t.Fatalf("got err %v stdout %q; want exit signal TERM after output", err, stdout.String())
		}
	})
}

// TestDropbearUpstreamWithoutHopKey: when the hop key line is missing from
// the VPS's authorized_keys (removed by hand), the user is told the VPS's
// sshd refused the gateway, and a direct certificate login shows the refusal
// is Dropbear's.
func TestDropbearUpstreamWithoutHopKey(t *testing.T) {
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	d := startDropbear(t)
	g.registerUpstream(t, "dbvps", d.addr, []string{d.hostKey}, key)
	d.authorize(t, key.auth.Line, CertAuthorityLine(g.ca.PublicKey()))

	_, errOut, code := runSSH(t, nil, g.sshArgs(key, g.port(), "dbvps@127.0.0.1", "true")...)
	want := fmt.Sprintf("the sshd of VPS dbvps refused the login as %q", loginUser(t))
	if code != 255 || !strings.Contains(errOut, want) {
		t.Fatalf("status %d stderr %q; want 255 and %q", code, errOut, want)
	}
	pinned, _, _, _, _ := gossh.ParseAuthorizedKey([]byte(d.hostKey))
	_, err := gossh.Dial("tcp", d.addr, &gossh.ClientConfig{
		User: loginUser(t), Auth: []gossh.AuthMethod{certAuth(t, g.ca, loginUser(t))},
		HostKeyCallback: gossh.FixedHostKey(pinned), HostKeyAlgorithms: []string{pinned.Type()}, Timeout: 10 * time.Second,
	})
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("direct certificate login to dropbear: %v; want an authentication failure", err)
	}
}

// TestHopKeysPerVPS: a hop key is stable for a VPS, differs between VPSs and
// between clusters, and its line is a plain public key without options.
func TestHopKeysPerVPS(t *testing.T) {
	newCA := func() []byte {
		id, err := GenerateIdentity()
		if err != nil {
			t.Fatal(err)
		}
		return id.UserCA
	}
	keysOf := func(userCA []byte) *HopKeys {
		h, err := NewHopKeys(userCA)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	caA := newCA()
	a, again, b := keysOf(caA), keysOf(caA), keysOf(newCA())
	fp := func(h *HopKeys, id string) string { return gossh.FingerprintSHA256(h.Signer(id).PublicKey()) }
	// Same CA, derived anew (as after a host restart): the same key.
	if fp(a, "t1") != fp(again, "t1") {
		t.Fatal("hop key of one VPS changed between derivations")
	}
	if fp(a, "t1") == fp(a, "t2") {
		t.Fatal("two VPSs share a hop key")
	}
	if fp(a, "t1") == fp(b, "t1") {
		t.Fatal("two clusters derive the same hop key")
	}
	line := a.AuthorizedKeyLine("t1")
	pub, comment, opts, rest, err := gossh.ParseAuthorizedKey([]byte(line))
	if err != nil || len(opts) != 0 || len(rest) != 0 || comment != "kohakuriver-gateway-hop" || gossh.FingerprintSHA256(pub) != fp(a, "t1") {
		t.Fatalf("line %q: key %v comment %q options %v err %v", line, pub, comment, opts, err)
	}
	if _, err := NewHopKeys([]byte("not a key")); err == nil {
		t.Fatal("NewHopKeys accepted garbage")
	}
}
