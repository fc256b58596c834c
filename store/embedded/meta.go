package embedded

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/kohakuriver/kohakuriver/store"
)

// The meta bucket holds:
//
//	schema_version  decimal schemaVersion, written by the first Open
//	identity        store.Identity JSON, written once by Identity
//	last_port       decimal SSH port CreateVPS handed out last (allocPort
//	                starts after it); absent before the first CreateVPS

// Identity implements store.Store. generate runs outside any transaction
// and only while no identity is stored; concurrent callers wait for the
// first one and all get the identity it stored. If generate fails nothing is
// stored and its error is returned (wrapped); a later call tries again. A
// nil generate with no stored identity yields store.ErrNotFound. CreatedAt
// is set to now when generate leaves it zero. Once stored, the identity is
// never overwritten, and each call returns a fresh deep copy.
func (db *DB) Identity(ctx context.Context, generate func() (store.Identity, error)) (store.Identity, error) {
	if id := db.ident.Load(); id != nil {
		if err := db.ready(ctx); err != nil {
			return store.Identity{}, err
		}
		return cloneIdentity(*id), nil
	}

	db.idMu.Lock()
	defer db.idMu.Unlock()
	id, found, err := db.loadIdentity(ctx)
	if err != nil || found {
		return id, err
	}
	if generate == nil {
		return store.Identity{}, fmt.Errorf("identity: %w", store.ErrNotFound)
	}
	gen, err := generate()
	if err != nil {
		return store.Identity{}, fmt.Errorf("generate identity: %w", err)
	}
	gen = cloneIdentity(gen)
	if gen.CreatedAt.IsZero() {
		gen.CreatedAt = db.now()
	}
	var stored store.Identity
	err = db.update(ctx, func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if data := meta.Get(metaIdentity); data != nil {
			// Not reachable while this process holds the file lock and
			// idMu; kept so that the identity is never overwritten.
			var err error
			stored, err = decodeIdentity(data)
			return err
		}
		data, err := encode(gen)
		if err != nil {
			return err
		}
		stored = gen
		return meta.Put(metaIdentity, data)
	})
	if err != nil {
		return store.Identity{}, fmt.Errorf("store identity: %w", err)
	}
	db.ident.Store(&stored)
	db.log.Info("gateway identity created", "host_keys", len(stored.HostKeys))
	return cloneIdentity(stored), nil
}

// loadIdentity reads the stored identity and caches it. Callers hold idMu.
func (db *DB) loadIdentity(ctx context.Context) (id store.Identity, found bool, err error) {
	err = db.view(ctx, func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketMeta).Get(metaIdentity)
		if data == nil {
			return nil
		}
		found = true
		var err error
		id, err = decodeIdentity(data)
		return err
	})
	if err != nil {
		return store.Identity{}, false, fmt.Errorf("load identity: %w", err)
	}
	if found {
		db.ident.Store(&id)
		return cloneIdentity(id), true, nil
	}
	return store.Identity{}, false, nil
}
