package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

// TestE2E shares one cluster and one logged-in user among its subtests;
// they run in order and later ones use the VPS "gen" made by the first.
func TestE2E(t *testing.T) {
	c := newE2ECluster(t)
	// ssh must use only the keys the tests give it.
	t.Setenv("SSH_AUTH_SOCK", "")
	u := c.loggedIn(t, "alice")
	var gen createdVPS // --gen-ssh-key VPS, kept for the later subtests

	t.Run("key modes end in a real ssh login", func(t *testing.T) {
		upload := filepath.Join(u.home, ".ssh", "id_ed25519")
		newKeyPair(t, upload, "alice@laptop")
		newKeyPair(t, filepath.Join(u.home, "filekey"), "file")
		_, strLine := newKeyPair(t, filepath.Join(u.home, "strkey"), "string")
		for _, tc := range []struct {
			name   string
			create []string
			key    string // --key for kohakuriver ssh; "" = auto-detected
			mode   store.KeyMode
		}{
			{"gen-ssh-key", []string{"--ssh", "--gen-ssh-key", "--name", "gen"}, "", store.KeyModeGenerated},
			{"upload", []string{"--ssh", "-c", "1", "-m", "512M"}, "~/.ssh/id_ed25519", store.KeyModeUpload},
			// Found through ~/.ssh/kohakuriver_<task_id>, a link to it.
			{"key-out-file", []string{"--gen-ssh-key", "--key-out-file", "~/keys/out"}, "", store.KeyModeGenerated},
			{"public-key-file", []string{"--public-key-file", "~/filekey.pub"}, "~/filekey", store.KeyModeFile},
			{"public-key-string", []string{"--public-key-string", strLine}, "~/strkey", store.KeyModeString},
		} {
			t.Run(tc.name, func(t *testing.T) {
				v := createJSON(t, u, append(tc.create, "-t", c.node)...)
				if v.KeyMode != tc.mode || len(v.Keys) != 1 {
					t.Fatalf("created %+v", v)
				}
				args := []string{"ssh", v.TaskID}
				if tc.key != "" {
					args = append(args, "--key", tc.key)
				}
				want := hostname(t, u, v.TaskID)
				r := u.run(append(args, "--", "-o", "BatchMode=yes", "cat", "/etc/hostname")...)
				if r.code != 0 || r.stdout != want {
					t.Fatalf("ssh login: want %q: %s", want, r)
				}
				if tc.mode == store.KeyModeGenerated {
					if m := mode(t, v.PrivateKeyFile); m != 0o600 {
						t.Fatalf("private key %s mode %o", v.PrivateKeyFile, m)
					}
				}
				if tc.name == "gen-ssh-key" {
					if v.PrivateKeyFile != filepath.Join(u.home, ".ssh", "kohakuriver_"+v.TaskID) {
						t.Fatalf("private key at %s", v.PrivateKeyFile)
					}
					gen = v
					return
				}
				u.mustRun("vps", "delete", v.TaskID)
			})
		}
		if gen.TaskID == "" {
			t.Fatal("no gen VPS")
		}
	})
	if gen.TaskID == "" {
		t.FailNow()
	}
	want := hostname(t, u, gen.TaskID)

	t.Run("no-ssh-key", func(t *testing.T) {
		v := createJSON(t, u, "--no-ssh-key")
		if len(v.Keys) != 0 || !strings.Contains(u.mustRun("vps", "keys", v.TaskID).stdout, "FINGERPRINT") {
			t.Fatalf("keys %+v", v.Keys)
		}
		// No key opens it (the gateway relays the image's own login).
		r := u.run("ssh", v.TaskID, "--key", "~/.ssh/id_ed25519", "--", "-o", "BatchMode=yes", "true")
		if r.code != 255 {
			t.Fatalf("key login to a VPS made without keys: %s", r)
		}
		u.mustRun("vps", "delete", v.TaskID, "-y")
	})

	t.Run("keys add and remove", func(t *testing.T) {
		key := filepath.Join(u.home, "later")
		_, line := newKeyPair(t, key, "later")
		login := func() result {
			return u.run("ssh", "gen", "--key", key, "--", "-o", "BatchMode=yes", "true")
		}
		if r := login(); r.code != 255 {
			t.Fatalf("login with a key that is not authorized: %s", r)
		}
		u.mustRun("vps", "keys", "add", "gen", "--public-key-file", key+".pub")
		if r := login(); r.code != 0 {
			t.Fatalf("login after keys add: %s", r)
		}
		u.mustRun("vps", "keys", "remove", "gen", fingerprintOf(t, line))
		if r := login(); r.code != 255 {
			t.Fatalf("login after keys remove: %s", r)
		}
	})

	t.Run("printed commands work", func(t *testing.T) {
		for _, line := range gen.SSHCommands[1:] {
			r := shell(t, u.home, line+" -o BatchMode=yes cat /etc/hostname")
			if r.code != 0 || r.stdout != want {
				t.Fatalf("%s: %s", line, r)
			}
		}
	})

	t.Run("exit code and streams of ssh", func(t *testing.T) {
		r := u.run("ssh", "gen", "--", "echo out; echo err >&2; exit 42")
		if r.code != 42 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
			t.Fatal(r)
		}
	})

	t.Run("ssh config with ssh, Include, scp, sftp and rsync", func(t *testing.T) {
		u.mustRun("ssh", "config", "--output", "~/.ssh/kohakuriver_config")
		cfg := filepath.Join(u.home, ".ssh", "kohakuriver_config")
		userCfg := filepath.Join(u.home, ".ssh", "config")
		if err := os.WriteFile(userCfg, []byte("Include "+cfg+"\n\nHost *\n    BatchMode yes\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		alias := "kohakuriver-" + gen.TaskID
		for _, line := range []string{
			"ssh -F " + cfg + " -o BatchMode=yes " + alias + " cat /etc/hostname",
			"ssh -F " + cfg + " -o BatchMode=yes kohakuriver-gen cat /etc/hostname",
			"ssh -F " + userCfg + " " + alias + " cat /etc/hostname",
		} {
			if r := shell(t, u.home, line); r.code != 0 || r.stdout != want {
				t.Fatalf("%s: want %q: %s", line, want, r)
			}
		}
		payload := "payload " + time.Now().String() + "\n"
		if err := os.WriteFile(filepath.Join(u.home, "up.txt"), []byte(payload), 0o644); err != nil {
			t.Fatal(err)
		}
		batch := "put up.txt /tmp/sftp.txt\nget /tmp/sftp.txt back.txt\n"
		if err := os.WriteFile(filepath.Join(u.home, "batch"), []byte(batch), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, step := range []struct{ line, remote string }{
			{"scp -F " + cfg + " -o BatchMode=yes up.txt " + alias + ":/tmp/scp.txt", "/tmp/scp.txt"},
			{"sftp -F " + cfg + " -o BatchMode=yes -b batch " + alias, "/tmp/sftp.txt"},
			{"rsync -e 'ssh -F " + cfg + " -o BatchMode=yes' up.txt kohakuriver-gen:/tmp/rsync.txt", "/tmp/rsync.txt"},
		} {
			if r := shell(t, u.home, step.line); r.code != 0 {
				t.Fatalf("%s: %s", step.line, r)
			}
			if got := u.mustRun("terminal", "exec", "gen", "--", "cat", step.remote).stdout; got != payload {
				t.Fatalf("%s: remote file holds %q", step.line, got)
			}
		}
		if b, _ := os.ReadFile(filepath.Join(u.home, "back.txt")); string(b) != payload {
			t.Fatalf("sftp get: %q", b)
		}
	})

	t.Run("local port", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var stdout, stderr syncBuffer
		done := make(chan int, 1)
		port := freePort(t)
		go func() {
			done <- run(ctx, []string{"ssh", "gen", "--local-port", itoa(port)}, u.envFor(&stdout, &stderr))
		}()
		waitForMatch(t, &stdout, regexp.MustCompile(`Forwarding 127\.0\.0\.1:(\d+)`), done)
		line := regexp.MustCompile(`(?m)^  (ssh .*)$`).FindStringSubmatch(stdout.String())
		if line == nil {
			t.Fatalf("no ssh line:\n%s", stdout.String())
		}
		// The printed line, and plain ssh with the generated key.
		for _, l := range []string{
			line[1] + " -o BatchMode=yes cat /etc/hostname",
			"ssh -F /dev/null -o BatchMode=yes -i " + gen.PrivateKeyFile + " -o UserKnownHostsFile=" +
				filepath.Join(u.home, ".kohakuriver", "known_hosts") + " -o HostKeyAlias=kohakuriver-gateway -p " +
				itoa(port) + " root@127.0.0.1 cat /etc/hostname",
		} {
			if r := shell(t, u.home, l); r.code != 0 || r.stdout != want {
				t.Fatalf("%s: %s", l, r)
			}
		}
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the forward did not stop")
		}
	})

	t.Run("terminal exec", func(t *testing.T) {
		r := u.run("terminal", "exec", "gen", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
		if r.code != 3 || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Fatal(r)
		}
		u.stdin = "through stdin\n"
		r = u.run("terminal", "exec", gen.TaskID, "--", "cat")
		u.stdin = ""
		if r.code != 0 || r.stdout != "through stdin\n" {
			t.Fatal(r)
		}
	})

	t.Run("vps list json", func(t *testing.T) {
		r := u.mustRun("vps", "list", "--format", "json")
		var list []store.VPS
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
			t.Fatalf("%v: %s", err, r.stdout)
		}
		if len(list) != 1 || list[0].TaskID != gen.TaskID || list[0].Status != store.StatusRunning ||
			list[0].SSHPort != gen.SSHPort || list[0].Owner != "alice" {
			t.Fatalf("%+v", list)
		}
	})

	t.Run("stop, start, restart, delete", func(t *testing.T) {
		if r := u.mustRun("vps", "stop", "gen"); !strings.Contains(r.stdout, "is stopped") {
			t.Fatal(r)
		}
		if r := u.run("ssh", "gen", "--", "true"); r.code != 1 || !strings.Contains(r.stderr, "kohakuriver vps start gen") {
			t.Fatal(r)
		}
		u.mustRun("vps", "start", "gen")
		u.mustRun("vps", "restart", "gen")
		if r := u.run("ssh", "gen", "--", "-o", "BatchMode=yes", "true"); r.code != 0 {
			t.Fatalf("after restart: %s", r)
		}
		u.mustRun("vps", "delete", "gen")
		if r := u.run("vps", "status", "gen"); r.code != 1 || !strings.Contains(r.stderr, `no VPS "gen"`) {
			t.Fatal(r)
		}
	})
}
