package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/kohakuriver/kohakuriver/store"
)

// vpsBuckets are the VPS record bucket and its indexes within one
// transaction. Open creates them all, so none is ever nil.
type vpsBuckets struct {
	vps, byName, byPort, byKey *bolt.Bucket
}

func vpsBucketsOf(tx *bolt.Tx) vpsBuckets {
	return vpsBuckets{
		vps:    tx.Bucket(bucketVPS),
		byName: tx.Bucket(bucketVPSByName),
		byPort: tx.Bucket(bucketVPSByPort),
		byKey:  tx.Bucket(bucketVPSByKey),
	}
}

// CreateVPS implements store.Store. Besides the interface's defaults it
// sets Status to store.StatusPending when empty, stores each key in the
// normalised form store.ParseAuthorizedKey returns (a repeated fingerprint
// is kept once), and overwrites CreatedAt and UpdatedAt. v.SSHPort must be
// zero: the store assigns it. Validation and key parsing happen before the
// transaction; only uniqueness checks and the port allocation run inside it.
func (db *DB) CreateVPS(ctx context.Context, v store.VPS) (store.VPS, error) {
	v, err := prepareNewVPS(v)
	if err != nil {
		return store.VPS{}, fmt.Errorf("create vps: %w", err)
	}
	err = db.update(ctx, func(tx *bolt.Tx) error {
		b := vpsBucketsOf(tx)
		if b.vps.Get([]byte(v.TaskID)) != nil {
			return fmt.Errorf("task id %s: %w", v.TaskID, store.ErrExists)
		}
		port, err := db.allocPort(b.byPort, tx.Bucket(bucketMeta))
		if err != nil {
			return err
		}
		v.SSHPort = port
		now := db.now()
		v.CreatedAt, v.UpdatedAt = now, now
		if err := putVPS(b, v, nil); err != nil {
			return err
		}
		db.emit(tx, store.Event{Kind: store.EventVPSPut, VPS: cloneVPS(v)})
		return nil
	})
	if err != nil {
		return store.VPS{}, fmt.Errorf("create vps: %w", err)
	}
	return cloneVPS(v), nil
}

// prepareNewVPS fills CreateVPS's defaults and validates v.
func prepareNewVPS(v store.VPS) (store.VPS, error) {
	v = cloneVPS(v)
	switch {
	case v.TaskID == "":
		v.TaskID = store.NewTaskID()
	case !store.IsTaskID(v.TaskID):
		return store.VPS{}, fmt.Errorf("%w: task id %q must be 19 digits", store.ErrInvalid, v.TaskID)
	}
	if v.SSHPort != 0 {
		return store.VPS{}, fmt.Errorf("%w: ssh port is assigned by the store, leave it zero", store.ErrInvalid)
	}
	if v.LoginUser == "" {
		v.LoginUser = store.DefaultLoginUser
	}
	if v.Status == "" {
		v.Status = store.StatusPending
	}
	if err := validateVPS(&v, nil); err != nil {
		return store.VPS{}, err
	}
	return v, nil
}

// validateVPS checks the fields every stored VPS satisfies and normalises
// v.Keys. Keys equal to one of oldKeys (already validated when stored) are
// not parsed again.
func validateVPS(v *store.VPS, oldKeys []store.AuthorizedKey) error {
	if v.Name != "" {
		if err := store.ValidateName(v.Name); err != nil {
			return err
		}
	}
	if err := store.ValidateLoginUser(v.LoginUser); err != nil {
		return err
	}
	if v.Owner == "" {
		return fmt.Errorf("%w: VPS owner is empty", store.ErrInvalid)
	}
	if v.Node == "" {
		return fmt.Errorf("%w: VPS node is empty", store.ErrInvalid)
	}
	keys, err := validateKeys(v.Keys, oldKeys)
	if err != nil {
		return err
	}
	v.Keys = keys
	return nil
}

func validateKeys(keys, oldKeys []store.AuthorizedKey) ([]store.AuthorizedKey, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	out := make([]store.AuthorizedKey, 0, len(keys))
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		if !slices.Contains(oldKeys, k) {
			parsed, err := store.ParseAuthorizedKey(k.Line)
			if err != nil {
				return nil, fmt.Errorf("key %d: %w", i+1, err)
			}
			if parsed.Fingerprint != k.Fingerprint {
				return nil, fmt.Errorf("%w: key %d: fingerprint %q does not match the key (%s)",
					store.ErrInvalid, i+1, k.Fingerprint, parsed.Fingerprint)
			}
			k = parsed
		}
		if seen[k.Fingerprint] {
			continue
		}
		seen[k.Fingerprint] = true
		out = append(out, k)
	}
	return out, nil
}

// allocPort returns the first port without a vps_by_port entry after the
// one handed out last (meta's last_port), wrapping from portMax to portMin:
// a freed port goes back into use only after the rest of the range has
// been, so an old `ssh -p PORT` or ssh config entry does not reach a newer
// VPS that took the port straight away. It records the port it returns;
// the caller's transaction writes both or neither.
func (db *DB) allocPort(byPort, meta *bolt.Bucket) (int, error) {
	start := db.portMin
	if last, err := strconv.Atoi(string(meta.Get(metaLastPort))); err == nil && last >= db.portMin && last < db.portMax {
		start = last + 1
	}
	port, ok := firstFreePort(byPort, start, db.portMax)
	if !ok && start > db.portMin {
		port, ok = firstFreePort(byPort, db.portMin, start-1)
	}
	if !ok {
		return 0, fmt.Errorf("%w in %d-%d", store.ErrNoFreePort, db.portMin, db.portMax)
	}
	if err := meta.Put(metaLastPort, []byte(strconv.Itoa(port))); err != nil {
		return 0, err
	}
	return port, nil
}

// firstFreePort returns the lowest port of [from, to] without a vps_by_port
// entry. Keys sort by port, so it walks the entries from from until the
// first gap: no record is read.
func firstFreePort(byPort *bolt.Bucket, from, to int) (int, bool) {
	want := from
	c := byPort.Cursor()
	for k, _ := c.Seek(portKey(want)); k != nil && want <= to; k, _ = c.Next() {
		p, ok := keyPort(k)
		if !ok || p < want {
			continue // not a port key; checkIndexes in the tests rules this out
		}
		if p > want {
			break
		}
		want++
	}
	return want, want <= to
}

// putVPS writes v and moves its index entries from old's (nil on create).
// Callers have validated v; putVPS checks only name uniqueness. On error the
// caller's transaction must roll back.
func putVPS(b vpsBuckets, v store.VPS, old *store.VPS) error {
	id := []byte(v.TaskID)

	oldName := ""
	if old != nil {
		oldName = old.Name
	}
	if v.Name != oldName {
		if v.Name != "" {
			if owner := b.byName.Get([]byte(v.Name)); owner != nil && !bytes.Equal(owner, id) {
				return fmt.Errorf("VPS name %q: %w", v.Name, store.ErrNameTaken)
			}
			if err := b.byName.Put([]byte(v.Name), id); err != nil {
				return err
			}
		}
		if oldName != "" {
			if err := b.byName.Delete([]byte(oldName)); err != nil {
				return err
			}
		}
	}

	if old == nil {
		if err := b.byPort.Put(portKey(v.SSHPort), id); err != nil {
			return err
		}
	}

	var oldKeys []store.AuthorizedKey
	if old != nil {
		oldKeys = old.Keys
	}
	for _, k := range oldKeys {
		if !v.HasKey(k.Fingerprint) {
			if err := b.byKey.Delete(keyIndexKey(k.Fingerprint, v.TaskID)); err != nil {
				return err
			}
		}
	}
	for _, k := range v.Keys {
		if err := b.byKey.Put(keyIndexKey(k.Fingerprint, v.TaskID), nil); err != nil {
			return err
		}
	}

	data, err := encode(v)
	if err != nil {
		return err
	}
	return b.vps.Put(id, data)
}

// getVPS reads the record of a task id. Errors: store.ErrNotFound, or a
// decode error naming the key.
func getVPS(b vpsBuckets, taskID string) (store.VPS, error) {
	data := b.vps.Get([]byte(taskID))
	if data == nil {
		return store.VPS{}, fmt.Errorf("vps %s: %w", taskID, store.ErrNotFound)
	}
	return decodeVPSRecord([]byte(taskID), data)
}

// decodeVPSRecord decodes a vps bucket entry and checks it is stored under
// its own task id.
func decodeVPSRecord(k, data []byte) (store.VPS, error) {
	v, err := decodeVPS(data)
	if err != nil {
		return store.VPS{}, fmt.Errorf("vps record %q: %w", k, err)
	}
	if v.TaskID != string(k) {
		return store.VPS{}, fmt.Errorf("vps record %q holds task id %s", k, v.TaskID)
	}
	return v, nil
}

// getIndexedVPS reads the record an index entry points to. A missing record
// is a broken invariant, reported as such rather than as ErrNotFound.
func getIndexedVPS(b vpsBuckets, index string, id []byte) (store.VPS, error) {
	v, err := getVPS(b, string(id))
	if errors.Is(err, store.ErrNotFound) {
		return store.VPS{}, fmt.Errorf("index %s points to missing vps %q", index, id)
	}
	return v, err
}

// VPS implements store.Store. A ref shaped like a task id is looked up as
// one; names cannot have that shape (store.ValidateName).
func (db *DB) VPS(ctx context.Context, ref string) (store.VPS, error) {
	var v store.VPS
	err := db.view(ctx, func(tx *bolt.Tx) error {
		b := vpsBucketsOf(tx)
		var err error
		if store.IsTaskID(ref) {
			v, err = getVPS(b, ref)
			return err
		}
		var id []byte
		if ref != "" {
			id = b.byName.Get([]byte(ref))
		}
		if id == nil {
			return fmt.Errorf("vps %q: %w", ref, store.ErrNotFound)
		}
		v, err = getIndexedVPS(b, "vps_by_name", id)
		return err
	})
	if err != nil {
		return store.VPS{}, err
	}
	return v, nil
}

// VPSByPort implements store.Store.
func (db *DB) VPSByPort(ctx context.Context, port int) (store.VPS, error) {
	var v store.VPS
	err := db.view(ctx, func(tx *bolt.Tx) error {
		b := vpsBucketsOf(tx)
		var id []byte
		if port >= 1 && port <= 65535 {
			id = b.byPort.Get(portKey(port))
		}
		if id == nil {
			return fmt.Errorf("vps on port %d: %w", port, store.ErrNotFound)
		}
		var err error
		v, err = getIndexedVPS(b, "vps_by_port", id)
		return err
	})
	if err != nil {
		return store.VPS{}, err
	}
	return v, nil
}

// VPSByKey implements store.Store. It returns nil, not an error, when no
// VPS holds the key or the fingerprint is malformed.
func (db *DB) VPSByKey(ctx context.Context, fingerprint string) ([]store.VPS, error) {
	var out []store.VPS
	err := db.view(ctx, func(tx *bolt.Tx) error {
		if fingerprint == "" || strings.IndexByte(fingerprint, 0) >= 0 {
			return nil
		}
		b := vpsBucketsOf(tx)
		prefix := keyIndexPrefix(fingerprint)
		c := b.byKey.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			v, err := getIndexedVPS(b, "vps_by_key", k[len(prefix):])
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ListVPS implements store.Store.
func (db *DB) ListVPS(ctx context.Context) ([]store.VPS, error) {
	var out []store.VPS
	err := db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVPS).ForEach(func(k, data []byte) error {
			v, err := decodeVPSRecord(k, data)
			if err != nil {
				return err
			}
			out = append(out, v)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UpdateVPS implements store.Store. fn receives a copy of the stored VPS.
// If fn changes TaskID, SSHPort or CreatedAt the update is refused with
// store.ErrInvalid; UpdatedAt is always set by the store. The result is
// validated like CreateVPS's input (new keys are parsed and normalised) and
// a new name must be free. If fn changes nothing, nothing is written, no
// event is sent and UpdatedAt keeps its value. fn's own error is returned
// unwrapped.
func (db *DB) UpdateVPS(ctx context.Context, taskID string, fn func(*store.VPS) error) (store.VPS, error) {
	var out store.VPS
	var fnErr error
	err := db.update(ctx, func(tx *bolt.Tx) error {
		b := vpsBucketsOf(tx)
		old, err := getVPS(b, taskID)
		if err != nil {
			return err
		}
		v := cloneVPS(old)
		if err := fn(&v); err != nil {
			fnErr = err
			return err
		}
		v = cloneVPS(v) // detach from anything fn kept a reference to
		switch {
		case v.TaskID != old.TaskID:
			return fmt.Errorf("%w: the task id cannot change", store.ErrInvalid)
		case v.SSHPort != old.SSHPort:
			return fmt.Errorf("%w: the ssh port cannot change", store.ErrInvalid)
		case !v.CreatedAt.Equal(old.CreatedAt):
			return fmt.Errorf("%w: the creation time cannot change", store.ErrInvalid)
		}
		v.CreatedAt = old.CreatedAt
		if err := validateVPS(&v, old.Keys); err != nil {
			return err
		}
		v.UpdatedAt = old.UpdatedAt
		if reflect.DeepEqual(v, old) {
			out = old
			return nil
		}
		v.UpdatedAt = db.now()
		if err := putVPS(b, v, &old); err != nil {
			return err
		}
		db.emit(tx, store.Event{Kind: store.EventVPSPut, VPS: cloneVPS(v)})
		out = v
		return nil
	})
	if fnErr != nil {
		return store.VPS{}, fnErr
	}
	if err != nil {
		return store.VPS{}, fmt.Errorf("update vps %s: %w", taskID, err)
	}
	return cloneVPS(out), nil
}

// DeleteVPS implements store.Store. It removes the record and every index
// entry of it in one transaction, which frees the port.
func (db *DB) DeleteVPS(ctx context.Context, taskID string) error {
	err := db.update(ctx, func(tx *bolt.Tx) error {
		b := vpsBucketsOf(tx)
		v, err := getVPS(b, taskID)
		if err != nil {
			return err
		}
		id := []byte(v.TaskID)
		if v.Name != "" && bytes.Equal(b.byName.Get([]byte(v.Name)), id) {
			if err := b.byName.Delete([]byte(v.Name)); err != nil {
				return err
			}
		}
		if bytes.Equal(b.byPort.Get(portKey(v.SSHPort)), id) {
			if err := b.byPort.Delete(portKey(v.SSHPort)); err != nil {
				return err
			}
		}
		for _, k := range v.Keys {
			if err := b.byKey.Delete(keyIndexKey(k.Fingerprint, v.TaskID)); err != nil {
				return err
			}
		}
		if err := b.vps.Delete(id); err != nil {
			return err
		}
		db.emit(tx, store.Event{Kind: store.EventVPSDeleted, VPS: v})
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete vps %s: %w", taskID, err)
	}
	return nil
}
