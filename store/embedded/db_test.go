package embedded

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kohakuriver/kohakuriver/store"
)

func TestOpenCreatesPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "gateway")
	path := filepath.Join(dir, "store.db")
	db, err := Open(path, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{{dir, 0o700}, {path, 0o600}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.mode {
			t.Errorf("%s: mode %o, want %o", c.path, got, c.mode)
		}
	}
	v, err := db.CreateVPS(context.Background(), newVPS(""))
	if err != nil {
		t.Fatal(err)
	}
	if v.SSHPort != DefaultPortMin {
		t.Errorf("first port = %d, want %d", v.SSHPort, DefaultPortMin)
	}
}

func TestOpenInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{"min above max", Options{PortMin: 9100, PortMax: 9000}},
		{"max above 65535", Options{PortMin: 9000, PortMax: 70000}},
		{"negative min", Options{PortMin: -1, PortMax: 10}},
		{"max below default min", Options{PortMax: 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "store.db")
			db, err := Open(path, &tt.opts)
			if !errors.Is(err, store.ErrInvalid) {
				if db != nil {
					db.Close()
				}
				t.Fatalf("Open = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestOpenLockedFails(t *testing.T) {
	db := openTestDB(t, nil)
	// flock locks belong to the open file description, so a second Open in
	// this process conflicts exactly like one in another process.
	const timeout = 300 * time.Millisecond
	start := time.Now()
	second, err := Open(db.Path(), &Options{Timeout: timeout})
	elapsed := time.Since(start)
	if err == nil {
		second.Close()
		t.Fatal("second Open succeeded on a locked file")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("err = %v, want ErrLocked", err)
	}
	want := "store is in use by another process (" + db.Path() + ")"
	if err.Error() != want {
		t.Errorf("message = %q, want %q", err, want)
	}
	if elapsed > timeout+time.Second {
		t.Errorf("second Open took %v, timeout was %v", elapsed, timeout)
	}
	// The first DB is unaffected.
	if _, err := db.CreateVPS(context.Background(), newVPS("still-works")); err != nil {
		t.Errorf("CreateVPS on first DB: %v", err)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	db, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaSchemaVersion, []byte("2"))
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	db, err = Open(path, nil)
	if err == nil {
		db.Close()
		t.Fatal("Open accepted schema version 2")
	}
	if !strings.Contains(err.Error(), "schema version 2 is newer") {
		t.Errorf("err = %v", err)
	}
}

func TestPersistenceAcrossReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	opts := &Options{PortMin: 20000, PortMax: 20010}
	db, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	a := mustCreate(t, db, newVPS("alpha", 1, 2))
	b := mustCreate(t, db, newVPS("", 3))
	c := mustCreate(t, db, newVPS("gamma"))
	if err := db.DeleteVPS(ctx, b.TaskID); err != nil {
		t.Fatal(err)
	}
	id, err := db.Identity(ctx, func() (store.Identity, error) {
		return store.Identity{HostKeys: [][]byte{[]byte("hostkey")}, UserCA: []byte("ca"), ClusterToken: "tok"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	u, err := db.CreateUser(ctx, store.User{Name: "alice", TokenHash: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	before, err := db.ListVPS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		db.Close()
		checkFile(t, path)
	}()
	after, err := db.ListVPS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, before) {
		t.Errorf("ListVPS after reopen:\n%+v\nwant\n%+v", after, before)
	}
	if got, err := db.VPSByKey(ctx, testKey(2).Fingerprint); err != nil || len(got) != 1 || got[0].TaskID != a.TaskID {
		t.Errorf("VPSByKey after reopen = %v, %v", taskIDs(got), err)
	}
	if got, err := db.VPSByPort(ctx, c.SSHPort); err != nil || got.TaskID != c.TaskID {
		t.Errorf("VPSByPort after reopen = %v, %v", got.TaskID, err)
	}
	gotID, err := db.Identity(ctx, func() (store.Identity, error) {
		t.Error("generate called although an identity is stored")
		return store.Identity{}, nil
	})
	if err != nil || !reflect.DeepEqual(gotID, id) {
		t.Errorf("Identity after reopen = %+v, %v; want %+v", gotID, err, id)
	}
	if got, err := db.UserByTokenHash(ctx, "h1"); err != nil || !reflect.DeepEqual(got, u) {
		t.Errorf("UserByTokenHash after reopen = %+v, %v", got, err)
	}
	// Allocation goes on after the port handed out last (c's, kept in
	// meta across the reopen), not back to the freed one.
	d := mustCreate(t, db, newVPS("delta"))
	if d.SSHPort != c.SSHPort+1 || d.SSHPort == b.SSHPort {
		t.Errorf("new VPS got port %d, want %d (after the last one handed out; %d was freed)", d.SSHPort, c.SSHPort+1, b.SSHPort)
	}
}

func TestMethodsAfterClose(t *testing.T) {
	db := openTestDB(t, nil)
	ctx := context.Background()
	v := mustCreate(t, db, newVPS("web"))
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	tests := []struct {
		name string
		call func() error
	}{
		{"CreateVPS", func() error { _, err := db.CreateVPS(ctx, newVPS("x")); return err }},
		{"VPS", func() error { _, err := db.VPS(ctx, "web"); return err }},
		{"VPSByPort", func() error { _, err := db.VPSByPort(ctx, v.SSHPort); return err }},
		{"VPSByKey", func() error { _, err := db.VPSByKey(ctx, "SHA256:x"); return err }},
		{"ListVPS", func() error { _, err := db.ListVPS(ctx); return err }},
		{"UpdateVPS", func() error {
			_, err := db.UpdateVPS(ctx, v.TaskID, func(*store.VPS) error { return nil })
			return err
		}},
		{"DeleteVPS", func() error { return db.DeleteVPS(ctx, v.TaskID) }},
		{"UpsertNode", func() error {
			_, err := db.UpsertNode(ctx, "n1", func(*store.Node) error { return nil })
			return err
		}},
		{"Node", func() error { _, err := db.Node(ctx, "n1"); return err }},
		{"ListNodes", func() error { _, err := db.ListNodes(ctx); return err }},
		{"DeleteNode", func() error { return db.DeleteNode(ctx, "n1") }},
		{"CreateUser", func() error { _, err := db.CreateUser(ctx, store.User{Name: "bob", TokenHash: "h"}); return err }},
		{"User", func() error { _, err := db.User(ctx, "bob"); return err }},
		{"UserByTokenHash", func() error { _, err := db.UserByTokenHash(ctx, "h"); return err }},
		{"ListUsers", func() error { _, err := db.ListUsers(ctx); return err }},
		{"DeleteUser", func() error { return db.DeleteUser(ctx, "bob") }},
		{"Identity", func() error {
			_, err := db.Identity(ctx, func() (store.Identity, error) { return store.Identity{}, nil })
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, store.ErrClosed) {
				t.Errorf("err = %v, want ErrClosed", err)
			}
		})
	}
	t.Run("Watch", func(t *testing.T) {
		if _, ok := <-db.Watch(ctx); ok {
			t.Error("Watch after Close delivered an event")
		}
	})
}

func TestCanceledContext(t *testing.T) {
	db := openTestDB(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := db.CreateVPS(ctx, newVPS("web")); !errors.Is(err, context.Canceled) {
		t.Errorf("CreateVPS = %v, want context.Canceled", err)
	}
	if vs, err := db.ListVPS(context.Background()); err != nil || len(vs) != 0 {
		t.Errorf("ListVPS = %d records, %v; want none", len(vs), err)
	}
}
