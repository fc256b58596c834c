package embedded

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

func TestCreateVPSValidation(t *testing.T) {
	db := openTestDB(t, nil)
	existing := mustCreate(t, db, newVPS("taken"))

	withKey := func(k store.AuthorizedKey) store.VPS {
		v := newVPS("")
		v.Keys = []store.AuthorizedKey{k}
		return v
	}
	mod := func(f func(*store.VPS)) store.VPS {
		v := newVPS("")
		f(&v)
		return v
	}
	tests := []struct {
		name string
		in   store.VPS
		want error
	}{
		{"bad name", newVPS("Bad_Name"), store.ErrInvalid},
		{"all-digit name", newVPS("12345"), store.ErrInvalid},
		{"bad login user", mod(func(v *store.VPS) { v.LoginUser = "Root!" }), store.ErrInvalid},
		{"empty owner", mod(func(v *store.VPS) { v.Owner = "" }), store.ErrInvalid},
		{"empty node", mod(func(v *store.VPS) { v.Node = "" }), store.ErrInvalid},
		{"bad task id", mod(func(v *store.VPS) { v.TaskID = "vm-1" }), store.ErrInvalid},
		{"port given", mod(func(v *store.VPS) { v.SSHPort = 9001 }), store.ErrInvalid},
		{"unparsable key", withKey(store.AuthorizedKey{Line: "ssh-ed25519 nope", Fingerprint: "SHA256:x"}), store.ErrInvalid},
		{"fingerprint mismatch", withKey(store.AuthorizedKey{Line: testKey(1).Line, Fingerprint: testKey(2).Fingerprint}), store.ErrInvalid},
		{"empty fingerprint", withKey(store.AuthorizedKey{Line: testKey(1).Line}), store.ErrInvalid},
		{"name taken", newVPS("taken"), store.ErrNameTaken},
		{"task id exists", mod(func(v *store.VPS) { v.TaskID = existing.TaskID }), store.ErrExists},
		{"valid with keys", newVPS("ok", 1, 2), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := db.CreateVPS(context.Background(), tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("CreateVPS = %v, want %v", err, tt.want)
			}
		})
	}
	// Refused creates left nothing behind: only two records, ports 9000-9001.
	vs, err := db.ListVPS(context.Background())
	if err != nil || len(vs) != 2 || vs[1].SSHPort != DefaultPortMin+1 {
		t.Errorf("after refused creates: %d records, %v", len(vs), err)
	}
}

func TestVPSRoundTrip(t *testing.T) {
	db := openTestDB(t, nil)
	ctx := context.Background()
	in := newVPS("web", 1, 2, 1) // a repeated key is kept once
	in.Keys[0].Line += "   "     // stored normalised
	v := mustCreate(t, db, in)

	if !store.IsTaskID(v.TaskID) || v.SSHPort != DefaultPortMin || v.LoginUser != store.DefaultLoginUser ||
		v.Status != store.StatusPending || !v.CreatedAt.Equal(testNow) || !v.UpdatedAt.Equal(testNow) {
		t.Errorf("defaults not filled: %+v", v)
	}
	if want := []store.AuthorizedKey{testKey(1), testKey(2)}; !reflect.DeepEqual(v.Keys, want) {
		t.Errorf("Keys = %v, want %v", v.Keys, want)
	}

	lookups := []struct {
		name string
		get  func() (store.VPS, error)
	}{
		{"by task id", func() (store.VPS, error) { return db.VPS(ctx, v.TaskID) }},
		{"by name", func() (store.VPS, error) { return db.VPS(ctx, "web") }},
		{"by port", func() (store.VPS, error) { return db.VPSByPort(ctx, v.SSHPort) }},
		{"by key", func() (store.VPS, error) {
			vs, err := db.VPSByKey(ctx, testKey(2).Fingerprint)
			if len(vs) != 1 {
				return store.VPS{}, errors.Join(err, store.ErrNotFound)
			}
			return vs[0], err
		}},
		{"list", func() (store.VPS, error) {
			vs, err := db.ListVPS(ctx)
			if len(vs) != 1 {
				return store.VPS{}, errors.Join(err, store.ErrNotFound)
			}
			return vs[0], err
		}},
	}
	for _, l := range lookups {
		t.Run(l.name, func(t *testing.T) {
			got, err := l.get()
			if err != nil || !reflect.DeepEqual(got, v) {
				t.Errorf("got %+v, %v\nwant %+v", got, err, v)
			}
		})
	}

	// Values returned are copies: changing them changes nothing stored.
	v.Keys[0].Line = "changed"
	if got, _ := db.VPS(ctx, v.TaskID); got.Keys[0].Line == "changed" {
		t.Error("returned Keys alias the store")
	}

	if err := db.DeleteVPS(ctx, v.TaskID); err != nil {
		t.Fatal(err)
	}
	notFound := []struct {
		name string
		call func() error
	}{
		{"VPS by id", func() error { _, err := db.VPS(ctx, v.TaskID); return err }},
		{"VPS by name", func() error { _, err := db.VPS(ctx, "web"); return err }},
		{"VPS empty ref", func() error { _, err := db.VPS(ctx, ""); return err }},
		{"VPSByPort", func() error { _, err := db.VPSByPort(ctx, v.SSHPort); return err }},
		{"VPSByPort out of range", func() error { _, err := db.VPSByPort(ctx, 70000); return err }},
		{"DeleteVPS again", func() error { return db.DeleteVPS(ctx, v.TaskID) }},
		{"UpdateVPS", func() error {
			_, err := db.UpdateVPS(ctx, v.TaskID, func(*store.VPS) error { return nil })
			return err
		}},
	}
	for _, c := range notFound {
		t.Run(c.name, func(t *testing.T) {
			if err := c.call(); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
		})
	}
	if vs, err := db.VPSByKey(ctx, testKey(1).Fingerprint); err != nil || vs != nil {
		t.Errorf("VPSByKey after delete = %v, %v", taskIDs(vs), err)
	}
}

func TestUpdateVPS(t *testing.T) {
	errFn := errors.New("fn says no")
	later := testNow.Add(time.Hour)
	tests := []struct {
		name    string
		fn      func(*store.VPS) error
		want    error
		check   func(t *testing.T, before, after store.VPS)
		written bool
	}{
		{
			name:    "status and message",
			fn:      func(v *store.VPS) error { v.Status, v.Message = store.StatusFailed, "no image"; return nil },
			written: true,
			check: func(t *testing.T, _, after store.VPS) {
				if after.Status != store.StatusFailed || after.Message != "no image" || !after.UpdatedAt.Equal(later) {
					t.Errorf("after = %+v", after)
				}
			},
		},
		{name: "rename", fn: func(v *store.VPS) error { v.Name = "renamed"; return nil }, written: true},
		{name: "drop name", fn: func(v *store.VPS) error { v.Name = ""; return nil }, written: true},
		{name: "rename to taken", fn: func(v *store.VPS) error { v.Name = "other"; return nil }, want: store.ErrNameTaken},
		{name: "bad name", fn: func(v *store.VPS) error { v.Name = "-x-"; return nil }, want: store.ErrInvalid},
		{name: "task id", fn: func(v *store.VPS) error { v.TaskID = store.NewTaskID(); return nil }, want: store.ErrInvalid},
		{name: "ssh port", fn: func(v *store.VPS) error { v.SSHPort++; return nil }, want: store.ErrInvalid},
		{name: "created at", fn: func(v *store.VPS) error { v.CreatedAt = later; return nil }, want: store.ErrInvalid},
		{name: "empty owner", fn: func(v *store.VPS) error { v.Owner = ""; return nil }, want: store.ErrInvalid},
		{name: "bad new key", fn: func(v *store.VPS) error {
			v.Keys = append(v.Keys, store.AuthorizedKey{Line: "garbage", Fingerprint: "SHA256:x"})
			return nil
		}, want: store.ErrInvalid},
		{name: "fn error", fn: func(v *store.VPS) error { v.Name = "lost"; return errFn }, want: errFn},
		{name: "no change", fn: func(v *store.VPS) error { return nil }, check: func(t *testing.T, before, after store.VPS) {
			if !reflect.DeepEqual(before, after) {
				t.Errorf("no-op update changed the record: %+v", after)
			}
		}},
		{name: "updated at is the store's", fn: func(v *store.VPS) error {
			v.UpdatedAt = time.Unix(0, 0)
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTestDB(t, nil)
			ctx := context.Background()
			mustCreate(t, db, newVPS("other"))
			before := mustCreate(t, db, newVPS("web", 1))
			db.now = func() time.Time { return later }

			got, err := db.UpdateVPS(ctx, before.TaskID, tt.fn)
			if !errors.Is(err, tt.want) {
				t.Fatalf("UpdateVPS = %v, want %v", err, tt.want)
			}
			if tt.want == errFn && err != errFn {
				t.Errorf("fn's error was wrapped: %v", err)
			}
			stored, err := db.VPS(ctx, before.TaskID)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want != nil {
				if !reflect.DeepEqual(stored, before) {
					t.Errorf("refused update wrote %+v", stored)
				}
				return
			}
			if !reflect.DeepEqual(got, stored) {
				t.Errorf("returned %+v, stored %+v", got, stored)
			}
			if wrote := !reflect.DeepEqual(stored, before); wrote != tt.written {
				t.Errorf("written = %v, want %v", wrote, tt.written)
			}
			if tt.check != nil {
				tt.check(t, before, stored)
			}
		})
	}
}

func TestRenameFreesName(t *testing.T) {
	db := openTestDB(t, nil)
	ctx := context.Background()
	a := mustCreate(t, db, newVPS("first"))
	if _, err := db.UpdateVPS(ctx, a.TaskID, func(v *store.VPS) error { v.Name = "second"; return nil }); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		in   store.VPS
		want error
	}{
		{"old name is free", newVPS("first"), nil},
		{"new name is taken", newVPS("second"), store.ErrNameTaken},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if _, err := db.CreateVPS(ctx, s.in); !errors.Is(err, s.want) {
				t.Errorf("CreateVPS = %v, want %v", err, s.want)
			}
		})
	}
	if got, err := db.VPS(ctx, "second"); err != nil || got.TaskID != a.TaskID {
		t.Errorf("VPS(second) = %s, %v; want %s", got.TaskID, err, a.TaskID)
	}
	// Renaming to its own name is not a conflict.
	if _, err := db.UpdateVPS(ctx, a.TaskID, func(v *store.VPS) error { v.Name = "second"; return nil }); err != nil {
		t.Errorf("rename to own name: %v", err)
	}
}

func TestVPSByKeyFollowsKeyUpdates(t *testing.T) {
	db := openTestDB(t, nil)
	ctx := context.Background()
	v1 := mustCreate(t, db, newVPS("one", 1, 2))
	v2 := mustCreate(t, db, newVPS("two", 2))
	setKeys := func(taskID string, keys ...int) func() error {
		return func() error {
			_, err := db.UpdateVPS(ctx, taskID, func(v *store.VPS) error {
				v.Keys = newVPS("", keys...).Keys
				return nil
			})
			return err
		}
	}
	steps := []struct {
		name string
		do   func() error
		want map[int][]string // key -> task ids, in task id order
	}{
		{"initial", nil, map[int][]string{1: {v1.TaskID}, 2: {v1.TaskID, v2.TaskID}, 3: nil}},
		{"v1 swaps to key 3", setKeys(v1.TaskID, 3), map[int][]string{1: nil, 2: {v2.TaskID}, 3: {v1.TaskID}}},
		{"v2 adds keys 1 and 3", setKeys(v2.TaskID, 2, 1, 3), map[int][]string{1: {v2.TaskID}, 2: {v2.TaskID}, 3: {v1.TaskID, v2.TaskID}}},
		{"v1 drops all keys", setKeys(v1.TaskID), map[int][]string{1: {v2.TaskID}, 3: {v2.TaskID}}},
		{"v2 deleted", func() error { return db.DeleteVPS(ctx, v2.TaskID) }, map[int][]string{1: nil, 2: nil, 3: nil}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.do != nil {
				if err := s.do(); err != nil {
					t.Fatal(err)
				}
			}
			for key, want := range s.want {
				got, err := db.VPSByKey(ctx, testKey(key).Fingerprint)
				if err != nil {
					t.Fatal(err)
				}
				if ids := taskIDs(got); !slices.Equal(ids, want) {
					t.Errorf("VPSByKey(key %d) = %v, want %v", key, ids, want)
				}
			}
		})
	}
	for _, fp := range []string{"", "SHA256:a\x00b"} {
		if got, err := db.VPSByKey(ctx, fp); err != nil || got != nil {
			t.Errorf("VPSByKey(%q) = %v, %v", fp, taskIDs(got), err)
		}
	}
}

func TestListVPSTaskIDOrder(t *testing.T) {
	db := openTestDB(t, nil)
	var want []string
	for range 20 {
		want = append(want, mustCreate(t, db, newVPS("")).TaskID)
	}
	slices.Sort(want)
	got, err := db.ListVPS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(taskIDs(got), want) {
		t.Errorf("ListVPS order = %v, want %v", taskIDs(got), want)
	}
}
