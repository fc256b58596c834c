package cli

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

func TestKeyFlagsCheck(t *testing.T) {
	t.Parallel()
	good := newPublicKey(t, "me")
	for _, tc := range []struct {
		name  string
		flags KeyFlags
		want  string // "" = valid
	}{
		{"none given", KeyFlags{}, ""},
		{"--ssh alone", KeyFlags{SSH: true}, ""},
		{"gen with out file", KeyFlags{GenSSHKey: true, KeyOutFile: "k"}, ""},
		{"string", KeyFlags{SSH: true, PublicKeyString: good}, ""},
		{"gen and file", KeyFlags{GenSSHKey: true, PublicKeyFile: "x"}, "--gen-ssh-key and --public-key-file cannot be combined"},
		{"string and none", KeyFlags{PublicKeyString: good, NoSSHKey: true}, "--public-key-string and --no-ssh-key cannot be combined"},
		{"out file alone", KeyFlags{KeyOutFile: "k"}, "add --gen-ssh-key or drop --key-out-file"},
		{"two keys in the string", KeyFlags{PublicKeyString: good + "\n" + good}, "one public key per line"},
		{"certificate type", KeyFlags{PublicKeyString: "ssh-ed25519-cert-v01@openssh.com AAAA"}, "--public-key-string: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.flags.check()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), store.ErrInvalid.Error()) {
				t.Errorf("error shows the store sentinel: %v", err)
			}
		})
	}
}

func TestGenerateKeyPair(t *testing.T) {
	// A restrictive umask must not change the modes, and an existing key
	// is never overwritten.
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "key")
	line, err := generateKeyPair(p, "c")
	if err != nil {
		t.Fatal(err)
	}
	if k, err := store.ParseAuthorizedKey(line); err != nil || !strings.HasSuffix(k.Line, " c") {
		t.Fatalf("%q: %v", line, err)
	}
	if m := mode(t, p); m != 0o600 {
		t.Errorf("private %o", m)
	}
	if m := mode(t, p+".pub"); m != 0o644 {
		t.Errorf("public %o", m)
	}
	if m := mode(t, filepath.Dir(p)); m != 0o700 {
		t.Errorf("dir %o", m)
	}
	before, _ := os.ReadFile(p)
	if _, err := generateKeyPair(p, ""); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("overwrote: %v", err)
	}
	if after, _ := os.ReadFile(p); string(after) != string(before) {
		t.Fatal("the existing key changed")
	}
}
