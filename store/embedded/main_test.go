package embedded

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"
	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// Watch starts a goroutine per watcher; every test must leave none behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testNow is the fixed clock of tests that compare timestamps.
var testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// openTestDB opens a fresh DB in t.TempDir. At cleanup it closes the DB and
// checks the file's integrity (bbolt's Tx.Check and checkIndexes); on
// failure the file is copied out of the temp dir and its path logged.
func openTestDB(t *testing.T, opts *Options) *DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store.db")
	db, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	db.now = func() time.Time { return testNow }
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		checkFile(t, path)
	})
	return db
}

// checkFile opens path read-only and reports integrity errors with t.Error.
func checkFile(t *testing.T, path string) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Errorf("reopen for check: %v", err)
		return
	}
	err = bdb.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("bbolt check: %v", err)
		}
		return checkIndexes(tx)
	})
	if err != nil {
		t.Errorf("index check: %v", err)
	}
	if err := bdb.Close(); err != nil {
		t.Errorf("close after check: %v", err)
	}
	if t.Failed() {
		keepArtifact(t, path)
	}
}

func keepArtifact(t *testing.T, path string) {
	dir, err := os.MkdirTemp("", "embedded-failed-")
	if err != nil {
		t.Logf("keep artifact: %v", err)
		return
	}
	dst := filepath.Join(dir, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+".db")
	if err := copyFile(path, dst); err != nil {
		t.Logf("keep artifact: %v", err)
		return
	}
	t.Logf("database kept at %s", dst)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// hasKey reports whether b holds k. Index entries of vps_by_key have empty
// values, for which Get does not tell presence reliably.
func hasKey(b *bolt.Bucket, k []byte) bool {
	got, _ := b.Cursor().Seek(k)
	return got != nil && bytes.Equal(got, k)
}

// checkIndexes verifies the invariants of doc.go: every record has its
// index entries and every index entry points to a record that agrees with
// it, so no two VPSs share a port or a name.
func checkIndexes(tx *bolt.Tx) error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	b := vpsBucketsOf(tx)

	records := map[string]store.VPS{}
	portOwner := map[int]string{}
	nameOwner := map[string]string{}
	_ = b.vps.ForEach(func(k, data []byte) error {
		v, err := decodeVPSRecord(k, data)
		if err != nil {
			fail("%v", err)
			return nil
		}
		records[v.TaskID] = v
		if other, dup := portOwner[v.SSHPort]; dup {
			fail("port %d held by %s and %s", v.SSHPort, other, v.TaskID)
		}
		portOwner[v.SSHPort] = v.TaskID
		if got := b.byPort.Get(portKey(v.SSHPort)); string(got) != v.TaskID {
			fail("vps %s: vps_by_port[%d] = %q", v.TaskID, v.SSHPort, got)
		}
		if v.Name != "" {
			if other, dup := nameOwner[v.Name]; dup {
				fail("name %q held by %s and %s", v.Name, other, v.TaskID)
			}
			nameOwner[v.Name] = v.TaskID
			if got := b.byName.Get([]byte(v.Name)); string(got) != v.TaskID {
				fail("vps %s: vps_by_name[%q] = %q", v.TaskID, v.Name, got)
			}
		}
		for _, key := range v.Keys {
			if !hasKey(b.byKey, keyIndexKey(key.Fingerprint, v.TaskID)) {
				fail("vps %s: no vps_by_key entry for %s", v.TaskID, key.Fingerprint)
			}
		}
		return nil
	})
	_ = b.byName.ForEach(func(k, id []byte) error {
		if v, ok := records[string(id)]; !ok || v.Name != string(k) {
			fail("vps_by_name[%q] = %q: no such named record", k, id)
		}
		return nil
	})
	_ = b.byPort.ForEach(func(k, id []byte) error {
		p, ok := keyPort(k)
		if v, found := records[string(id)]; !ok || !found || v.SSHPort != p {
			fail("vps_by_port[%x] = %q: no record on that port", k, id)
		}
		return nil
	})
	_ = b.byKey.ForEach(func(k, _ []byte) error {
		fp, id, ok := splitKeyIndexKey(k)
		if v, found := records[id]; !ok || !found || !v.HasKey(fp) {
			fail("vps_by_key %q: no record with that key", k)
		}
		return nil
	})

	users, byToken := tx.Bucket(bucketUsers), tx.Bucket(bucketUsersByToken)
	tokens := map[string]string{}
	_ = users.ForEach(func(k, data []byte) error {
		u, err := decodeUserRecord(k, data)
		if err != nil {
			fail("%v", err)
			return nil
		}
		tokens[u.Name] = u.TokenHash
		if got := byToken.Get([]byte(u.TokenHash)); string(got) != u.Name {
			fail("user %s: users_by_token entry = %q", u.Name, got)
		}
		return nil
	})
	_ = byToken.ForEach(func(hash, name []byte) error {
		if h, ok := tokens[string(name)]; !ok || h != string(hash) {
			fail("users_by_token entry for %q: no such user with that token", name)
		}
		return nil
	})
	return errors.Join(errs...)
}

// testKey returns a deterministic ed25519 key, normalised as the store keeps it.
func testKey(i int) store.AuthorizedKey {
	seed := make([]byte, ed25519.SeedSize)
	seed[0], seed[1] = byte(i), byte(i>>8)
	pub, err := gossh.NewPublicKey(ed25519.NewKeyFromSeed(seed).Public())
	if err != nil {
		panic(err) // deterministic input: cannot happen
	}
	line := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub))) + fmt.Sprintf(" key%d@test", i)
	k, err := store.ParseAuthorizedKey(line)
	if err != nil {
		panic(err)
	}
	return k
}

// newVPS is a valid CreateVPS input.
func newVPS(name string, keys ...int) store.VPS {
	v := store.VPS{Name: name, Owner: "alice", Node: "node1", Image: "debian", KeyMode: store.KeyModeUpload}
	for _, i := range keys {
		v.Keys = append(v.Keys, testKey(i))
	}
	return v
}

func mustCreate(t *testing.T, db *DB, v store.VPS) store.VPS {
	t.Helper()
	got, err := db.CreateVPS(context.Background(), v)
	if err != nil {
		t.Fatalf("CreateVPS(%q): %v", v.Name, err)
	}
	return got
}

func taskIDs(vs []store.VPS) []string {
	ids := make([]string, len(vs))
	for i, v := range vs {
		ids[i] = v.TaskID
	}
	return ids
}
