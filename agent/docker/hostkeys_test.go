package docker

// Reading a VPS's host keys when its root broke them on purpose. These tests
// need no Docker engine; TestBrokenHostKeys in docker_test.go runs the same
// attack against a real container.

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	gossh "golang.org/x/crypto/ssh"
)

// garbageKey looks like a private key to anyone but a parser. Its marker
// must never reach a log.
const garbageKey = "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETMARKERb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"

// testHostKey returns a fresh private key in OpenSSH PEM format (encrypted
// when passphrase is set) and its authorized_keys line.
func testHostKey(t *testing.T, typ string, passphrase string) ([]byte, string) {
	t.Helper()
	var priv any
	switch typ {
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		priv = k
	case "ecdsa":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		priv = k
	default:
		t.Fatalf("key type %s", typ)
	}
	var block *pem.Block
	var err error
	if passphrase != "" {
		block, err = gossh.MarshalPrivateKeyWithPassphrase(priv, "", []byte(passphrase))
	} else {
		block, err = gossh.MarshalPrivateKey(priv, "")
	}
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block), authorizedKey(s.PublicKey())
}

func TestHostKeyPathsBounds(t *testing.T) {
	var conf strings.Builder
	for range 2000 {
		conf.WriteString("HostKey /etc/ssh/a\nHostKey /etc/ssh/./a\nHostKey /etc/ssh/b\n")
	}
	for i := range 10 {
		fmt.Fprintf(&conf, "HostKey /k%d\n", i)
	}
	got, more := hostKeyPaths([]byte(conf.String()), maxHostKeyPaths)
	want := []string{"/etc/ssh/a", "/etc/ssh/b", "/k0", "/k1", "/k2", "/k3", "/k4", "/k5"}
	if !slices.Equal(got, want) || !more {
		t.Fatalf("got %q, %v; want %q, true", got, more, want)
	}
	// Exactly the limit, however often repeated, is not "more".
	got, more = hostKeyPaths([]byte(strings.Repeat("HostKey /a\nHostKey /b\n", 500)), 2)
	if !slices.Equal(got, []string{"/a", "/b"}) || more {
		t.Fatalf("got %q, %v; want [/a /b], false", got, more)
	}
}

func TestHostKeyLinesAdd(t *testing.T) {
	ed, edLine := testHostKey(t, "ed25519", "")
	ec, ecLine := testHostKey(t, "ecdsa", "")
	locked, _ := testHostKey(t, "ed25519", "secret")

	var h hostKeyLines
	for _, tt := range []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"ed25519", ed, ""},
		{"same key again", ed, ""},
		{"garbage", []byte(garbageKey), "not a private key"},
		{"empty", nil, "not a private key"},
		{"passphrase protected", locked, "passphrase protected"},
	} {
		err := h.add(tt.data)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr) {
			t.Errorf("%s: add = %v, want %q", tt.name, err, tt.wantErr)
		}
	}
	if !slices.Equal(h.keys, []string{edLine}) || h.size != len(edLine) {
		t.Fatalf("keys %q (%d bytes), want [%s] once", h.keys, h.size, edLine)
	}

	// The bound: a key that just fits is reported, the next one is not.
	h = hostKeyLines{size: maxHostKeyBytes - len(edLine)}
	if err := h.add(ed); err != nil || h.size != maxHostKeyBytes {
		t.Fatalf("key filling the bound exactly: %v, size %d", err, h.size)
	}
	if err := h.add(ec); err == nil || !strings.Contains(err.Error(), fmt.Sprint(maxHostKeyBytes)) {
		t.Fatalf("key past the bound: %v, want an error naming it", err)
	}
	if slices.Contains(h.keys, ecLine) {
		t.Fatal("key past the bound reported")
	}
}

// fakeContainer serves files to collectHostKeys and counts the reads.
type fakeContainer struct {
	files map[string][]byte
	errs  map[string]error
	reads map[string]int
}

func (f *fakeContainer) read(p string) ([]byte, error) {
	if f.reads == nil {
		f.reads = map[string]int{}
	}
	f.reads[p]++
	if err, ok := f.errs[p]; ok {
		return nil, err
	}
	if data, ok := f.files[p]; ok {
		return data, nil
	}
	return nil, fmt.Errorf("no file %s: %w", p, cerrdefs.ErrNotFound)
}

const (
	dropInPath   = hostKeyDir + "/" + hostKeyDropIn
	defaultEd    = hostKeyDir + "/ssh_host_ed25519_key"
	defaultEcdsa = hostKeyDir + "/ssh_host_ecdsa_key"
)

func TestCollectHostKeys(t *testing.T) {
	ed, edLine := testHostKey(t, "ed25519", "")
	ec, ecLine := testHostKey(t, "ecdsa", "")
	extra, _ := testHostKey(t, "ed25519", "")
	locked, _ := testHostKey(t, "ed25519", "secret")

	// What the VPS's root can do: garbage, a passphrase, a directory, a
	// file too big, thousands of HostKey lines, more paths than read.
	var hostile strings.Builder
	for range 1000 {
		for _, p := range []string{defaultEd, "/etc/ssh/locked", "/etc/ssh/dir", "/etc/ssh/big", "/etc/ssh/missing", defaultEcdsa} {
			fmt.Fprintf(&hostile, "HostKey %s\n", p)
		}
	}
	hostile.WriteString("HostKey /etc/ssh/z1\nHostKey /etc/ssh/z2\nHostKey /etc/ssh/extra\n")
	hostileFiles := map[string][]byte{
		dropInPath:        []byte(hostile.String()),
		defaultEd:         []byte(garbageKey),
		"/etc/ssh/locked": locked,
		defaultEcdsa:      ec,
		"/etc/ssh/z1":     []byte(garbageKey),
		"/etc/ssh/z2":     []byte(garbageKey),
		"/etc/ssh/extra":  extra, // the ninth path: not read
	}
	hostileErrs := map[string]error{
		"/etc/ssh/dir": errors.New("read /etc/ssh/dir: not a regular file"),
		"/etc/ssh/big": errors.New("read /etc/ssh/big: larger than 65536 bytes"),
	}

	for _, tt := range []struct {
		name         string
		files        map[string][]byte
		errs         map[string]error
		want         []string
		wantProblems []string // each appears in the problems, in this order
	}{
		{
			name:  "installed keys",
			files: map[string][]byte{dropInPath: []byte("HostKey " + defaultEd + "\nHostKey " + defaultEcdsa + "\n"), defaultEd: ed, defaultEcdsa: ec},
			want:  []string{edLine, ecLine},
		},
		{
			name:  "no drop-in: default paths",
			files: map[string][]byte{defaultEcdsa: ec},
			want:  []string{ecLine},
		},
		{
			name:         "hostile drop-in and keys",
			files:        hostileFiles,
			errs:         hostileErrs,
			want:         []string{ecLine},
			wantProblems: []string{"names more than 8 host keys", defaultEd + ": not a private key", "/etc/ssh/locked: passphrase protected", "/etc/ssh/dir: read /etc/ssh/dir: not a regular file", "/etc/ssh/big: read /etc/ssh/big: larger than", "/etc/ssh/z1: not a private key", "/etc/ssh/z2: not a private key"},
		},
		{
			name:         "unreadable drop-in: default paths",
			files:        map[string][]byte{defaultEd: ed, "/etc/ssh/extra": extra},
			errs:         map[string]error{dropInPath: errors.New("read " + dropInPath + ": larger than 65536 bytes")},
			want:         []string{edLine},
			wantProblems: []string{dropInPath + ": larger than 65536 bytes, read the default paths"},
		},
		{
			name:         "drop-in without HostKey lines, broken default key",
			files:        map[string][]byte{dropInPath: []byte("HostKey relative\n"), defaultEd: []byte(garbageKey)},
			wantProblems: []string{defaultEd + ": not a private key"},
		},
		{
			name:         "no keys at all",
			wantProblems: []string{"no host key found"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeContainer{files: tt.files, errs: tt.errs}
			keys, problems, err := collectHostKeys(t.Context(), f.read)
			if err != nil {
				t.Fatalf("err = %v; only a cut-short read may fail", err)
			}
			if !slices.Equal(keys, tt.want) {
				t.Errorf("keys = %q, want %q", keys, tt.want)
			}
			all := strings.Join(problems, "\n")
			rest := all
			for _, p := range tt.wantProblems {
				i := strings.Index(rest, p)
				if i < 0 {
					t.Errorf("problems lack %q (in order):\n%s", p, all)
					continue
				}
				rest = rest[i+len(p):]
			}
			if len(tt.wantProblems) == 0 && len(problems) > 0 {
				t.Errorf("problems = %q, want none", problems)
			}
			if strings.Contains(all, "SECRETMARKER") || strings.Contains(all, "PRIVATE KEY") {
				t.Errorf("problems quote a key file:\n%s", all)
			}
			total := 0
			for p, n := range f.reads {
				if n > 1 {
					t.Errorf("%s read %d times", p, n)
				}
				total += n
			}
			if total > 1+maxHostKeyPaths {
				t.Errorf("%d reads, bound %d", total, 1+maxHostKeyPaths)
			}
			if f.reads["/etc/ssh/extra"] > 0 {
				t.Error("read a key past the path bound")
			}
		})
	}
}

// A read cut short by the context or a dead engine fails instead of
// reporting too few keys, so that it is not cached.
func TestCollectHostKeysCutShort(t *testing.T) {
	ed, _ := testHostKey(t, "ed25519", "")
	ctx, cancel := context.WithCancel(t.Context())
	f := &fakeContainer{files: map[string][]byte{defaultEd: ed}}
	keys, problems, err := collectHostKeys(ctx, func(p string) ([]byte, error) {
		if p == defaultEd {
			cancel()
			return nil, context.Canceled
		}
		return f.read(p)
	})
	if !errors.Is(err, context.Canceled) || keys != nil || problems != nil {
		t.Fatalf("cancelled read = %q, %q, %v; want a context error", keys, problems, err)
	}
}

func TestHostKeysOfEngineDown(t *testing.T) {
	cli, err := client.New(client.WithHost("unix://" + t.TempDir() + "/no-docker.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	rt := &Runtime{cli: cli, log: slog.New(slog.DiscardHandler)}
	c := container.InspectResponse{ID: "c1", State: &container.State{Status: "running", StartedAt: "t1"}}
	if _, err := rt.info(t.Context(), "task1", c); !client.IsErrConnectionFailed(err) {
		t.Fatalf("info with the engine down = %v, want a connection error", err)
	}
	if keys, ok := rt.keys.get("c1", "t1"); ok {
		t.Fatalf("a failed read was cached: %q", keys)
	}
}
