package gateway

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// passwordSSHD is an in-process SSH server that only takes one password,
// standing in for a --no-ssh-key image with its own authentication. Its
// sessions print "hello <user>".
type passwordSSHD struct {
	addr     string
	hostKey  string
	attempts atomic.Int32
}

func startPasswordSSHD(t *testing.T, password string, interactive bool) *passwordSSHD {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := gossh.NewSignerFromKey(priv)
	p := &passwordSSHD{hostKey: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(signer.PublicKey())))}
	cfg := &gossh.ServerConfig{}
	if interactive {
		cfg.KeyboardInteractiveCallback = func(md gossh.ConnMetadata, ch gossh.KeyboardInteractiveChallenge) (*gossh.Permissions, error) {
			p.attempts.Add(1)
			ans, err := ch("vps", "say the word", []string{"Secret word: "}, []bool{false})
			if err != nil || len(ans) != 1 || ans[0] != password {
				return nil, errors.New("wrong")
			}
			return nil, nil
		}
	} else {
		cfg.PasswordCallback = func(md gossh.ConnMetadata, pw []byte) (*gossh.Permissions, error) {
			p.attempts.Add(1)
			if string(pw) != password {
				return nil, errors.New("wrong")
			}
			return nil, nil
		}
	}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p.addr = ln.Addr().String()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go servePasswordConn(nc, cfg)
		}
	}()
	return p
}

func servePasswordConn(nc net.Conn, cfg *gossh.ServerConfig) {
	sc, chans, reqs, err := gossh.NewServerConn(nc, cfg)
	if err != nil {
		nc.Close()
		return
	}
	defer sc.Close()
	go gossh.DiscardRequests(reqs)
	for newCh := range chans {
		if newCh.ChannelType() != "session" {
			_ = newCh.Reject(gossh.UnknownChannelType, "no")
			continue
		}
		ch, creqs, err := newCh.Accept()
		if err != nil {
			continue
		}
		go func() {
			for req := range creqs {
				_ = req.Reply(req.Type == "exec" || req.Type == "shell", nil)
				if req.Type == "exec" || req.Type == "shell" {
					fmt.Fprintf(ch, "hello %s\n", sc.User())
					_, _ = ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, 0))
					ch.Close()
				}
			}
		}()
	}
}

// askpass makes the ssh client answer every prompt with answer.
func askpass(t *testing.T, answer string) []string { return askpassRecording(t, answer, "") }

// askpassRecording is askpass that also appends each prompt to the file
// record, when that is set.
func askpassRecording(t *testing.T, answer, record string) []string {
	body := "#!/bin/sh\n"
	if record != "" {
		body += "echo \"$1\" >> '" + record + "'\n"
	}
	script := filepath.Join(t.TempDir(), "askpass")
	if err := os.WriteFile(script, []byte(body+"echo '"+answer+"'\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return []string{"SSH_ASKPASS=" + script, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0"}
}

func TestKeylessVPSRelaysInteractiveAuth(t *testing.T) {
	for _, mode := range []struct {
		name        string
		interactive bool
	}{{"sshd asks keyboard-interactive", true}, {"sshd takes passwords", false}} {
		t.Run(mode.name, func(t *testing.T) {
			g := newTestGateway(t, nil)
			up := startPasswordSSHD(t, "opensesame", mode.interactive)
			v := store.VPS{TaskID: store.NewTaskID(), Name: "nokey", Owner: "alice", Node: "node1",
				Status: store.StatusRunning, LoginUser: "bob", KeyMode: store.KeyModeNone, HostKeys: []string{up.hostKey}}
			g.hop.addrs[v.TaskID] = up.addr
			g.dir.put(v)
			key := newUserKey(t) // offered first and refused: no keys on this VPS
			args := interactiveArgs(g.sshArgs(key, g.port(), "-o", "NumberOfPasswordPrompts=1",
				"-o", "PreferredAuthentications=publickey,keyboard-interactive", "nokey@127.0.0.1", "ignored"))

			cmd := execSSH(args...)
			cmd.Env = append(os.Environ(), askpass(t, "opensesame")...)
			var errb strings.Builder
			cmd.Stderr = &errb
			out, err := cmd.Output()
			if err != nil || string(out) != "hello bob\n" {
				t.Fatalf("right password: %v, stdout %q stderr %q\n%s", err, out, errb.String(), g.logs.String())
			}

			before := up.attempts.Load()
			cmd = execSSH(args...)
			cmd.Env = append(os.Environ(), askpass(t, "wrong")...)
			if out, err := cmd.Output(); err == nil {
				t.Fatalf("wrong password logged in: %q", out)
			}
			if up.attempts.Load() == before {
				t.Fatal("the wrong password never reached the VPS: the gateway decided by itself")
			}
		})
	}
}

// TestKeylessPortPromptNamesOnlyThePort: the gateway's own password prompt
// (for an sshd that takes passwords) on a keyless VPS's port names the
// port, not the VPS: anyone who finds the port gets the prompt.
func TestKeylessPortPromptNamesOnlyThePort(t *testing.T) {
	g := newTestGateway(t, nil)
	up := startPasswordSSHD(t, "opensesame", false)
	port := freePort(t)
	v := store.VPS{TaskID: store.NewTaskID(), Name: "secret-lab", Owner: "alice", Node: "node1", SSHPort: port,
		Status: store.StatusRunning, LoginUser: "bob", KeyMode: store.KeyModeNone, HostKeys: []string{up.hostKey}}
	g.hop.mu.Lock()
	g.hop.addrs[v.TaskID] = up.addr
	g.hop.mu.Unlock()
	g.dir.put(v)
	waitPortListening(t, g.srv, port)

	prompts := filepath.Join(t.TempDir(), "prompts")
	askEnv := askpassRecording(t, "opensesame", prompts)
	args := interactiveArgs(g.sshArgs(newUserKey(t), port, "-o", "NumberOfPasswordPrompts=1",
		"-o", "PreferredAuthentications=publickey,keyboard-interactive", "bob@127.0.0.1", "ignored"))
	cmd := execSSH(args...)
	cmd.Env = append(os.Environ(), askEnv...)
	var errb strings.Builder
	cmd.Stderr = &errb
	if out, err := cmd.Output(); err != nil || string(out) != "hello bob\n" {
		t.Fatalf("login on the port: %v, stdout %q stderr %q", err, out, errb.String())
	}
	asked, _ := os.ReadFile(prompts)
	want := fmt.Sprintf("Password for bob in the VPS on port %d", port)
	if !strings.Contains(string(asked), want) || strings.Contains(string(asked), "secret-lab") || strings.Contains(string(asked), v.TaskID) {
		t.Fatalf("prompts %q: want %q, and neither the VPS's name nor its task id", asked, want)
	}

	// A VPS that cannot take the login says so, again naming the port
	// only (a pending VPS keeps its port open).
	g.dir.update(v.TaskID, func(v *store.VPS) { v.Status = store.StatusPending })
	cmd = execSSH(args...)
	cmd.Env = append(os.Environ(), askEnv...)
	errb.Reset()
	cmd.Stderr = &errb
	if out, err := cmd.Output(); err == nil {
		t.Fatalf("logged in to a pending VPS: %q", out)
	}
	want = fmt.Sprintf("the VPS on port %d cannot take a login now (pending)", port)
	if !strings.Contains(errb.String(), want) || strings.Contains(errb.String(), "secret-lab") || strings.Contains(errb.String(), "node1") {
		t.Fatalf("stderr %q: want %q, and neither the VPS's name nor its node", errb.String(), want)
	}
}

func TestKeyVPSNeverPromptsForPassword(t *testing.T) {
	g := newTestGateway(t, nil)
	key, stranger := newUserKey(t), newUserKey(t)
	g.addVPS(t, "keyed", 0, key)
	args := interactiveArgs(g.sshArgs(stranger, g.port(), "-o", "PreferredAuthentications=publickey,keyboard-interactive",
		"keyed@127.0.0.1", "true"))
	cmd := execSSH(args...)
	prompted := filepath.Join(t.TempDir(), "prompted")
	script := filepath.Join(t.TempDir(), "askpass")
	_ = os.WriteFile(script, []byte("#!/bin/sh\ntouch "+prompted+"\necho x\n"), 0o700)
	cmd.Env = append(os.Environ(), "SSH_ASKPASS="+script, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0")
	if err := cmd.Run(); err == nil {
		t.Fatal("a stranger's key logged in")
	}
	if _, err := os.Stat(prompted); err == nil {
		t.Fatal("the client was prompted for a password on a key-only VPS")
	}
}

// interactiveArgs lets the client prompt (through SSH_ASKPASS).
func interactiveArgs(args []string) []string {
	for i, a := range args {
		if a == "BatchMode=yes" {
			args[i] = "BatchMode=no"
		}
	}
	return args
}
