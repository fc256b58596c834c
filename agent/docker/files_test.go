package docker

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"strings"
	"testing"

	"go.uber.org/goleak"
	gossh "golang.org/x/crypto/ssh"
)

// These tests need no Docker engine; docker_test.go has the ones that do.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(removeTestContainers))
}

const samplePasswd = `root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
broken:x:notanumber:1000::/home/broken:/bin/sh
relative:x:1001:1001::home/rel:/bin/sh
short:x:1002:1002
dots:x:1003:1003::/home/../home/dots/:/bin/sh
`

func TestParsePasswd(t *testing.T) {
	tests := []struct {
		name   string
		user   string
		want   passwdEntry
		wantOK bool
	}{
		{name: "root", user: "root", want: passwdEntry{0, 0, "/root"}, wantOK: true},
		{name: "regular user", user: "alice", want: passwdEntry{1000, 1000, "/home/alice"}, wantOK: true},
		{name: "cleaned home", user: "dots", want: passwdEntry{1003, 1003, "/home/dots"}, wantOK: true},
		{name: "missing", user: "bob"},
		{name: "bad uid", user: "broken"},
		{name: "relative home", user: "relative"},
		{name: "too few fields", user: "short"},
		{name: "empty name", user: ""},
		{name: "prefix is not a match", user: "ali"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parsePasswd([]byte(samplePasswd), tt.user)
			if ok != tt.wantOK || got != tt.want {
				t.Fatalf("parsePasswd(%q) = %+v, %v; want %+v, %v", tt.user, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// /etc/passwd belongs to the VPS's user: any content must parse safely and
// only yield absolute, clean homes and non-negative ids.
func FuzzParsePasswd(f *testing.F) {
	f.Add([]byte(samplePasswd), "alice")
	f.Add([]byte("x:x:1:1::/:/bin/sh\n"), "x")
	f.Add([]byte("a:b:4294967296:0::/a:/b"), "a")
	f.Fuzz(func(t *testing.T, data []byte, user string) {
		e, ok := parsePasswd(data, user)
		if !ok {
			return
		}
		if e.uid < 0 || e.gid < 0 || !strings.HasPrefix(e.home, "/") || strings.Contains(e.home, "/../") {
			t.Fatalf("parsePasswd returned %+v", e)
		}
	})
}

func testKeyLine(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := gossh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return authorizedKey(sp)
}

func TestAuthorizedKeysFile(t *testing.T) {
	key := testKeyLine(t)
	tests := []struct {
		name    string
		lines   []string
		want    string // after the header
		wantErr string
	}{
		{name: "none", lines: nil, want: ""},
		{name: "one key", lines: []string{key + " alice@laptop"}, want: key + " alice@laptop\n"},
		{name: "cert authority and blanks", lines: []string{"", "  cert-authority " + key + "  ", "# note"},
			want: "cert-authority " + key + "\n"},
		{name: "injected second line", lines: []string{key + "\n" + key}, wantErr: "line break"},
		{name: "carriage return", lines: []string{key + "\r"}, wantErr: "line break"},
		{name: "garbage", lines: []string{"ssh-ed25519 notbase64"}, wantErr: "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := authorizedKeysFile(tt.lines)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != authorizedKeysHeader+tt.want {
				t.Fatalf("got %q, want %q", got, authorizedKeysHeader+tt.want)
			}
		})
	}
}

func TestPrepareHostKeys(t *testing.T) {
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ecPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemOf := func(k any) []byte {
		b, err := gossh.MarshalPrivateKey(k, "")
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(b)
	}
	edSigner, _ := gossh.NewSignerFromKey(edPriv)
	ecSigner, _ := gossh.NewSignerFromKey(ecPriv)

	t.Run("generated", func(t *testing.T) {
		a, err := prepareHostKeys(nil, "c")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := prepareHostKeys(nil, "c")
		if len(a) != 1 || a[0].typ != "ed25519" || !strings.HasPrefix(a[0].pub, "ssh-ed25519 ") {
			t.Fatalf("got %+v", a)
		}
		if a[0].pub == b[0].pub {
			t.Fatal("two generated host keys are equal")
		}
		s, err := gossh.ParsePrivateKey(a[0].priv)
		if err != nil || authorizedKey(s.PublicKey()) != a[0].pub {
			t.Fatalf("private key does not match public: %v", err)
		}
	})
	t.Run("given, sorted ed25519 first", func(t *testing.T) {
		keys, err := prepareHostKeys([][]byte{pemOf(ecPriv), pemOf(edPriv)}, "c")
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 2 || keys[0].pub != authorizedKey(edSigner.PublicKey()) || keys[1].pub != authorizedKey(ecSigner.PublicKey()) {
			t.Fatalf("got %+v", keys)
		}
		if keys[1].typ != "ecdsa" || !strings.Contains(string(keys[1].priv), "OPENSSH PRIVATE KEY") {
			t.Fatalf("ecdsa key not re-encoded in OpenSSH format: %s", keys[1].priv)
		}
	})
	for _, tt := range []struct {
		name    string
		pems    [][]byte
		wantErr string
	}{
		{"two of a type", [][]byte{pemOf(edPriv), pemOf(edPriv)}, "second ed25519"},
		{"not a key", [][]byte{[]byte("hello")}, "host key 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := prepareHostKeys(tt.pems, "c")
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestHostKeyPaths(t *testing.T) {
	conf := "# c\nHostKey /etc/ssh/ssh_host_ed25519_key\nhostkey /etc/ssh/../ssh/k2\nHostKey relative\nHostKey\n"
	got, more := hostKeyPaths([]byte(conf), maxHostKeyPaths)
	if want := "/etc/ssh/ssh_host_ed25519_key,/etc/ssh/k2"; strings.Join(got, ",") != want || more {
		t.Fatalf("got %s, %v; want %s, false", strings.Join(got, ","), more, want)
	}
}

func TestCheckTaskID(t *testing.T) {
	for _, id := range []string{"1234567890123456789", "test-ab12.x_1"} {
		if err := checkTaskID(id); err != nil {
			t.Errorf("checkTaskID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", "-x", "a/b", "a b", "a=b", strings.Repeat("1", 129)} {
		if err := checkTaskID(id); err == nil {
			t.Errorf("checkTaskID(%q) = nil, want an error", id)
		}
	}
}
