package gateway

// Clients nobody here wrote, through the gateway to a real OpenSSH sshd:
// PuTTY (plink, pscp), Dropbear's dbclient, Paramiko, rsync and git over
// ssh. Assumes the packages testdata/setup.sh installs (putty-tools,
// dropbear-bin, python3-paramiko, rsync, git); a test whose tool is missing
// skips, or fails with KOHAKURIVER_REQUIRE_SSHD=1.
//
// Cipher compatibility (see ciphers.go): on a CPU with AES-NI the gateway
// offers only aes128-gcm and aes256-gcm. PuTTY 0.78 negotiates that. Debian's
// dbclient 2022.83 (built without DROPBEAR_ENABLE_GCM_MODE: `dbclient -c help`
// lists chacha20-poly1305, aes128-ctr, aes256-ctr) and Paramiko 2.12 (AES-CTR
// and CBC only; GCM arrived in Paramiko 3.3) cannot, so their tests run the
// gateway with CompatCiphers.
//
// The Go client's tests of the relay itself live next to what they
// exercise: many channels and abrupt disconnects in upstreams_test.go (one
// hop per client connection), the channel limit in requests_test.go, the
// forward limit in x11_test.go; the exit status race of PuTTY and dbclient
// in requests_test.go (TestExitStatusBeforeEOF).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// requireTools skips the test unless every binary is installed (fails
// instead with KOHAKURIVER_REQUIRE_SSHD=1, as requireOpenSSH does).
func requireTools(t testing.TB, bins ...string) {
	t.Helper()
	requireOpenSSH(t)
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("KOHAKURIVER_REQUIRE_SSHD") == "1" {
				t.Fatalf("%s not found: run testdata/setup.sh", bin)
			}
			t.Skipf("%s not found: run testdata/setup.sh", bin)
		}
	}
}

// runTool runs name like runCmd, with extra environment variables.
func runTool(t testing.TB, env []string, stdin []byte, name string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	// Never the terminal the tests run from: a client asking a question
	// (an unknown host key) reads EOF.
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s timed out; stderr: %s", name, errb.String())
	}
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%s: %v", name, err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

func mustRun(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	out, errOut, code := runTool(t, env, nil, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: status %d\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// puttyKey converts the OpenSSH-format key to PuTTY's .ppk.
func puttyKey(t testing.TB, key userKey) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "key.ppk")
	mustRun(t, puttyEnv(t), "puttygen", key.path, "-O", "private", "-o", out)
	return out
}

// puttyEnv keeps PuTTY's state (puttygen's and plink's random seed, in the
// login user's ~/.putty otherwise, whatever HOME says) in a temporary
// directory.
func puttyEnv(t testing.TB) []string {
	return []string{"PUTTYDIR=" + t.TempDir(), "HOME=" + t.TempDir()}
}

// dropbearKey converts the OpenSSH-format key to Dropbear's format.
func dropbearKey(t testing.TB, key userKey) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "key.dropbear")
	mustRun(t, nil, "dropbearconvert", "openssh", "dropbear", key.path, out)
	return out
}

// gatewayFingerprints are the SHA256 fingerprints of the gateway's host keys,
// as plink -hostkey takes them.
func (g *testGateway) gatewayFingerprints() []string {
	var fps []string
	for _, h := range g.hostKeys {
		fps = append(fps, gossh.FingerprintSHA256(h.PublicKey()))
	}
	return fps
}

// dropbearHome is a HOME whose ~/.ssh/known_hosts pins the gateway for
// dbclient, which reads no other file and has no option to name one.
// dbclient 2022.83 looks hosts up by bare name, port ignored ("127.0.0.1",
// not OpenSSH's "[127.0.0.1]:port"), and asks on stdin about unknown ones.
func (g *testGateway) dropbearHome(t testing.TB) string {
	t.Helper()
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	var pubs []gossh.PublicKey
	for _, h := range g.hostKeys {
		pubs = append(pubs, h.PublicKey())
	}
	kh := strings.Join(KnownHostsLines(pubs, "127.0.0.1"), "\n") + "\n"
	if err := os.WriteFile(filepath.Join(home, ".ssh", "known_hosts"), []byte(kh), 0o600); err != nil {
		t.Fatal(err)
	}
	return home
}

// thirdPartyClient builds one client's command line for "run cmd on the VPS".
type thirdPartyClient struct {
	name    string
	bins    []string
	ciphers []string // gateway Config.Ciphers; nil = the default
	argv    func(t *testing.T, g *testGateway, key userKey, user, cmd string) (env []string, name string, args []string)
}

var thirdPartyClients = []thirdPartyClient{
	{
		name: "plink",
		bins: []string{"plink", "puttygen"},
		argv: func(t *testing.T, g *testGateway, key userKey, user, cmd string) ([]string, string, []string) {
			args := []string{"-batch", "-ssh", "-P", strconv.Itoa(g.port()), "-i", puttyKey(t, key)}
			for _, fp := range g.gatewayFingerprints() {
				args = append(args, "-hostkey", fp)
			}
			return puttyEnv(t), "plink", append(args, user+"@127.0.0.1", cmd)
		},
	},
	{
		name: "dbclient",
		bins: []string{"dbclient", "dropbearconvert"},
		// dbclient 2022.83 as Debian builds it has no AES-GCM: the
		// gateway's default choice (ciphersFor) must still serve it.
		argv: func(t *testing.T, g *testGateway, key userKey, user, cmd string) ([]string, string, []string) {
			// No -y: an unknown or changed host key fails the test.
			args := []string{"-i", dropbearKey(t, key), "-p", strconv.Itoa(g.port()), user + "@127.0.0.1", cmd}
			return []string{"HOME=" + g.dropbearHome(t)}, "dbclient", args
		},
	},
}

func TestThirdPartyClientExec(t *testing.T) {
	tests := []struct {
		name       string
		cmd        string
		stdin      string
		wantOut    string
		wantErr    string // contained in stderr
		wantStatus int
	}{
		{name: "stdout and exit status", cmd: "echo hello from $(id -un); exit 3", wantOut: "hello from " + loginUser(t) + "\n", wantStatus: 3},
		{name: "stderr kept apart", cmd: "echo out; echo oops >&2", wantOut: "out\n", wantErr: "oops"},
		{name: "stdin round trip", cmd: "tr a-z A-Z", stdin: "shout\nagain\n", wantOut: "SHOUT\nAGAIN\n"},
		{name: "output after exit status", cmd: "seq 1 20000 | tail -n 1", wantOut: "20000\n"},
	}
	for _, cl := range thirdPartyClients {
		t.Run(cl.name, func(t *testing.T) {
			requireTools(t, cl.bins...)
			g := newTestGateway(t, func(c *Config) { c.Ciphers = cl.ciphers })
			key := newUserKey(t)
			g.addVPS(t, "box", 0, key)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					env, name, args := cl.argv(t, g, key, "box", tt.cmd)
					out, errOut, code := runTool(t, env, []byte(tt.stdin), name, args...)
					if out != tt.wantOut || code != tt.wantStatus || !strings.Contains(errOut, tt.wantErr) {
						t.Fatalf("%s: stdout %q stderr %q status %d; want stdout %q, stderr containing %q, status %d",
							name, out, errOut, code, tt.wantOut, tt.wantErr, tt.wantStatus)
					}
				})
			}
		})
	}
}

func TestPSCPRoundTrip(t *testing.T) {
	requireTools(t, "pscp", "puttygen")
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "files", 0, key)
	ppk := puttyKey(t, key)
	src := filepath.Join(t.TempDir(), "src.bin")
	data := randomBytes(t, 3<<20+5)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"-batch", "-P", strconv.Itoa(g.port()), "-i", ppk}
	for _, fp := range g.gatewayFingerprints() {
		base = append(base, "-hostkey", fp)
	}
	env := puttyEnv(t)
	remoteDir := t.TempDir() // the test sshd shares this machine's filesystem
	for _, mode := range []string{"-scp", "-sftp"} {
		t.Run(mode, func(t *testing.T) {
			remote := filepath.Join(remoteDir, "up"+mode)
			args := append(append([]string{}, base...), mode, src, "files@127.0.0.1:"+remote)
			if out, errOut, code := runTool(t, env, nil, "pscp", args...); code != 0 {
				t.Fatalf("pscp upload: status %d %s %s", code, out, errOut)
			}
			if got, _ := os.ReadFile(remote); sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatalf("uploaded file differs (%d bytes)", len(got))
			}
			back := filepath.Join(t.TempDir(), "back.bin")
			args = append(append([]string{}, base...), mode, "files@127.0.0.1:"+remote, back)
			if out, errOut, code := runTool(t, env, nil, "pscp", args...); code != 0 {
				t.Fatalf("pscp download: status %d %s %s", code, out, errOut)
			}
			if got, _ := os.ReadFile(back); sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatalf("downloaded file differs (%d bytes)", len(got))
			}
		})
	}
}

// paramikoScript logs in with a key, runs a command, round-trips a file over
// SFTP and opens a direct-tcpip channel; it prints one JSON object.
const paramikoScript = `
import hashlib, json, sys
import paramiko

host, port, user, key, known, local, remote, target = sys.argv[1:9]
c = paramiko.SSHClient()
c.load_host_keys(known)
c.set_missing_host_key_policy(paramiko.RejectPolicy())
c.connect(host, int(port), username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key),
          allow_agent=False, look_for_keys=False, timeout=20, banner_timeout=20, auth_timeout=20)
res = {"cipher": c.get_transport().remote_cipher}
_, out, err = c.exec_command("echo out; echo err >&2; exit 5")
res["exec_stdout"] = out.read().decode()
res["exec_stderr"] = err.read().decode()
res["exec_status"] = out.channel.recv_exit_status()

sftp = c.open_sftp()
sftp.put(local, remote)
sftp.get(remote, local + ".back")
sftp.close()
with open(local + ".back", "rb") as f:
    res["sftp_back_sha256"] = hashlib.sha256(f.read()).hexdigest()

th, tp = target.rsplit(":", 1)
ch = c.get_transport().open_channel("direct-tcpip", (th, int(tp)), ("127.0.0.1", 0))
ch.sendall(b"ping\n")
buf = b""
while not buf.endswith(b"\n"):
    d = ch.recv(1024)
    if not d:
        break
    buf += d
ch.close()
res["direct_tcpip"] = buf.decode()
c.close()
print(json.dumps(res))
`

// paramikoPython finds a python3 that can import paramiko (Debian's
// python3-paramiko is for /usr/bin/python3, which a pyenv shim may hide).
func paramikoPython(t testing.TB) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if err := exec.Command(py, "-c", "import paramiko").Run(); err == nil {
			return py
		}
	}
	if os.Getenv("KOHAKURIVER_REQUIRE_SSHD") == "1" {
		t.Fatal("no python3 with paramiko: run testdata/setup.sh")
	}
	t.Skip("no python3 with paramiko: run testdata/setup.sh")
	return ""
}

func TestParamiko(t *testing.T) {
	requireOpenSSH(t)
	py := paramikoPython(t)
	// Paramiko 2.12 has AES-CTR and CBC only, no AES-GCM: the default
	// cipher choice must serve it.
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "py", 0, key)
	target := echoServer(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "client.py")
	if err := os.WriteFile(script, []byte(paramikoScript), 0o600); err != nil {
		t.Fatal(err)
	}
	var pubs []string
	for _, h := range g.hostKeys {
		pubs = append(pubs, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(h.PublicKey()))))
	}
	known := filepath.Join(dir, "known_hosts")
	host := fmt.Sprintf("[127.0.0.1]:%d ", g.port())
	if err := os.WriteFile(known, []byte(host+strings.Join(pubs, "\n"+host)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(dir, "payload.bin")
	data := randomBytes(t, 2<<20+3)
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(t.TempDir(), "uploaded.bin")

	out, errOut, code := runTool(t, nil, nil, py, script, "127.0.0.1", strconv.Itoa(g.port()), "py", key.path, known, local, remote, target)
	if code != 0 {
		t.Fatalf("paramiko script: status %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	var res struct {
		Cipher      string `json:"cipher"`
		ExecStdout  string `json:"exec_stdout"`
		ExecStderr  string `json:"exec_stderr"`
		ExecStatus  int    `json:"exec_status"`
		SFTPBack    string `json:"sftp_back_sha256"`
		DirectTCPIP string `json:"direct_tcpip"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("script output %q: %v", out, err)
	}
	sum := sha256.Sum256(data)
	if got, _ := os.ReadFile(remote); sha256.Sum256(got) != sum {
		t.Errorf("sftp put: the VPS holds %d bytes with another checksum", len(got))
	}
	checks := []struct{ what, got, want string }{
		{"exec stdout", res.ExecStdout, "out\n"},
		// The login shell's start-up files may write to stderr first.
		{"exec stderr, last line", res.ExecStderr[strings.LastIndex(strings.TrimSuffix(res.ExecStderr, "\n"), "\n")+1:], "err\n"},
		{"exec status", strconv.Itoa(res.ExecStatus), "5"},
		{"sftp get checksum", res.SFTPBack, hex.EncodeToString(sum[:])},
		{"direct-tcpip echo", res.DirectTCPIP, "echo:ping\n"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.what, c.got, c.want)
		}
	}
	t.Logf("paramiko negotiated %s", res.Cipher)
}

func TestRsyncOverGateway(t *testing.T) {
	requireTools(t, "rsync")
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "sync", 0, key)

	src := t.TempDir()
	files := map[string][]byte{
		"a.txt":                 []byte("alpha\n"),
		"sub/b.txt":             []byte("beta\n"),
		"sub/deeper/big.bin":    randomBytes(t, 2<<20),
		"sub/deeper/empty.file": nil,
	}
	for name, data := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(src, "a.txt"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}

	rsh := "ssh " + strings.Join(g.sshArgs(key, g.port()), " ")
	remote := filepath.Join(t.TempDir(), "remote")
	back := filepath.Join(t.TempDir(), "back")
	mustRun(t, nil, "rsync", "-e", rsh, "-a", src+"/", "sync@127.0.0.1:"+remote+"/")
	mustRun(t, nil, "rsync", "-e", rsh, "-a", "sync@127.0.0.1:"+remote+"/", back+"/")

	want := treeSnapshot(t, src)
	for _, dir := range []string{remote, back} {
		got := treeSnapshot(t, dir)
		if len(got) != len(want) {
			t.Errorf("%s has %d entries, want %d: %v", dir, len(got), len(want), got)
		}
		for name, w := range want {
			if got[name] != w {
				t.Errorf("%s: %s is %q, want %q", dir, name, got[name], w)
			}
		}
	}
}

// treeSnapshot describes every entry under root: type, mode, and the content
// checksum or link target.
func treeSnapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			snap[rel] = "symlink -> " + target
		case d.IsDir():
			snap[rel] = fmt.Sprintf("dir %v", info.Mode().Perm())
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			snap[rel] = fmt.Sprintf("file %v %x", info.Mode().Perm(), sum[:8])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func TestGitOverGateway(t *testing.T) {
	requireTools(t, "git")
	g := newTestGateway(t, nil)
	key := newUserKey(t)
	g.addVPS(t, "forge", 0, key)

	tmp := t.TempDir()
	env := []string{"HOME=" + tmp, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
		"GIT_SSH_COMMAND=ssh " + strings.Join(g.sshArgs(key, 0), " ")}
	ident := []string{"-c", "user.name=Test", "-c", "user.email=test@example.com"}
	work := filepath.Join(tmp, "work")
	bare := filepath.Join(tmp, "repo.git")
	mustRun(t, env, "git", "init", "-q", "-b", "main", work)
	if err := os.WriteFile(filepath.Join(work, "README"), []byte("cloned through the gateway\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, env, "git", "-C", work, "add", "README")
	mustRun(t, env, "git", append(append([]string{"-C", work}, ident...), "commit", "-q", "-m", "first")...)
	mustRun(t, env, "git", "clone", "-q", "--bare", work, bare)

	url := fmt.Sprintf("ssh://forge@127.0.0.1:%d%s", g.port(), bare)
	clone := filepath.Join(tmp, "clone")
	mustRun(t, env, "git", "clone", "-q", url, clone)
	if got, _ := os.ReadFile(filepath.Join(clone, "README")); string(got) != "cloned through the gateway\n" {
		t.Fatalf("cloned README = %q", got)
	}
	// And back: a push lands in the repository on the VPS.
	if err := os.WriteFile(filepath.Join(clone, "NEW"), []byte("pushed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, env, "git", "-C", clone, "add", "NEW")
	mustRun(t, env, "git", append(append([]string{"-C", clone}, ident...), "commit", "-q", "-m", "second")...)
	mustRun(t, env, "git", "-C", clone, "push", "-q", "origin", "main")
	if got := mustRun(t, env, "git", "--git-dir", bare, "log", "-1", "--format=%s", "main"); got != "second\n" {
		t.Fatalf("bare repo head after push: %q, want second", got)
	}
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		t.Fatal(err)
	}
	return b
}
