package embedded

import (
	"bytes"
	"context"
	"fmt"
	"reflect"

	bolt "go.etcd.io/bbolt"

	"github.com/kohakuriver/kohakuriver/store"
)

// validateNodeName accepts what agents use as node names: host names,
// possibly with a domain, or any short printable token without spaces.
func validateNodeName(name string) error {
	if name == "" || len(name) > 253 {
		return fmt.Errorf("%w: node name must be 1-253 characters", store.ErrInvalid)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: node name %q must be printable ASCII without spaces", store.ErrInvalid, name)
		}
	}
	return nil
}

// UpsertNode implements store.Store. fn must not change Name (refused with
// store.ErrInvalid). RegisteredAt is set to now when a new node leaves it
// zero. If fn changes nothing on an existing node, nothing is written and no
// event is sent. fn's own error is returned unwrapped.
func (db *DB) UpsertNode(ctx context.Context, name string, fn func(*store.Node) error) (store.Node, error) {
	if err := validateNodeName(name); err != nil {
		return store.Node{}, fmt.Errorf("upsert node: %w", err)
	}
	var out store.Node
	var fnErr error
	err := db.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		n := store.Node{Name: name}
		data := b.Get([]byte(name))
		if data != nil {
			var err error
			if n, err = decodeNodeRecord([]byte(name), data); err != nil {
				return err
			}
		}
		old := n
		if err := fn(&n); err != nil {
			fnErr = err
			return err
		}
		if n.Name != name {
			return fmt.Errorf("%w: the node name cannot change", store.ErrInvalid)
		}
		if data != nil && reflect.DeepEqual(n, old) {
			out = n
			return nil
		}
		if data == nil && n.RegisteredAt.IsZero() {
			n.RegisteredAt = db.now()
		}
		enc, err := encode(n)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(name), enc); err != nil {
			return err
		}
		db.emit(tx, store.Event{Kind: store.EventNodePut, Node: n})
		out = n
		return nil
	})
	if fnErr != nil {
		return store.Node{}, fnErr
	}
	if err != nil {
		return store.Node{}, fmt.Errorf("upsert node %s: %w", name, err)
	}
	return out, nil
}

func decodeNodeRecord(k, data []byte) (store.Node, error) {
	n, err := decodeNode(data)
	if err != nil {
		return store.Node{}, fmt.Errorf("node record %q: %w", k, err)
	}
	if n.Name != string(k) {
		return store.Node{}, fmt.Errorf("node record %q holds node %q", k, n.Name)
	}
	return n, nil
}

// Node implements store.Store.
func (db *DB) Node(ctx context.Context, name string) (store.Node, error) {
	var n store.Node
	err := db.view(ctx, func(tx *bolt.Tx) error {
		var data []byte
		if name != "" {
			data = tx.Bucket(bucketNodes).Get([]byte(name))
		}
		if data == nil {
			return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
		}
		var err error
		n, err = decodeNodeRecord([]byte(name), data)
		return err
	})
	if err != nil {
		return store.Node{}, err
	}
	return n, nil
}

// ListNodes implements store.Store.
func (db *DB) ListNodes(ctx context.Context) ([]store.Node, error) {
	var out []store.Node
	err := db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(k, data []byte) error {
			n, err := decodeNodeRecord(k, data)
			if err != nil {
				return err
			}
			out = append(out, n)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteNode implements store.Store. VPSs on the node are not touched.
func (db *DB) DeleteNode(ctx context.Context, name string) error {
	err := db.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		var data []byte
		if name != "" {
			data = b.Get([]byte(name))
		}
		if data == nil {
			return store.ErrNotFound
		}
		n, err := decodeNodeRecord([]byte(name), data)
		if err != nil {
			return err
		}
		if err := b.Delete([]byte(name)); err != nil {
			return err
		}
		db.emit(tx, store.Event{Kind: store.EventNodeDeleted, Node: n})
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete node %q: %w", name, err)
	}
	return nil
}

// CreateUser implements store.Store. CreatedAt is set to now when zero. A
// token hash already used by another user is refused with store.ErrExists.
func (db *DB) CreateUser(ctx context.Context, u store.User) (store.User, error) {
	if err := store.ValidateUserName(u.Name); err != nil {
		return store.User{}, fmt.Errorf("create user: %w", err)
	}
	if u.TokenHash == "" {
		return store.User{}, fmt.Errorf("create user %s: %w: token hash is empty", u.Name, store.ErrInvalid)
	}
	err := db.update(ctx, func(tx *bolt.Tx) error {
		users, byToken := tx.Bucket(bucketUsers), tx.Bucket(bucketUsersByToken)
		if users.Get([]byte(u.Name)) != nil {
			return fmt.Errorf("user %s: %w", u.Name, store.ErrExists)
		}
		if byToken.Get([]byte(u.TokenHash)) != nil {
			return fmt.Errorf("token hash: %w", store.ErrExists)
		}
		if u.CreatedAt.IsZero() {
			u.CreatedAt = db.now()
		}
		data, err := encode(u)
		if err != nil {
			return err
		}
		if err := byToken.Put([]byte(u.TokenHash), []byte(u.Name)); err != nil {
			return err
		}
		return users.Put([]byte(u.Name), data)
	})
	if err != nil {
		return store.User{}, fmt.Errorf("create user: %w", err)
	}
	return u, nil
}

func getUser(users *bolt.Bucket, name []byte) (store.User, error) {
	var data []byte
	if len(name) > 0 {
		data = users.Get(name)
	}
	if data == nil {
		return store.User{}, fmt.Errorf("user %q: %w", name, store.ErrNotFound)
	}
	return decodeUserRecord(name, data)
}

func decodeUserRecord(k, data []byte) (store.User, error) {
	u, err := decodeUser(data)
	if err != nil {
		return store.User{}, fmt.Errorf("user record %q: %w", k, err)
	}
	if u.Name != string(k) {
		return store.User{}, fmt.Errorf("user record %q holds user %q", k, u.Name)
	}
	return u, nil
}

// User implements store.Store.
func (db *DB) User(ctx context.Context, name string) (store.User, error) {
	var u store.User
	err := db.view(ctx, func(tx *bolt.Tx) error {
		var err error
		u, err = getUser(tx.Bucket(bucketUsers), []byte(name))
		return err
	})
	if err != nil {
		return store.User{}, err
	}
	return u, nil
}

// UserByTokenHash implements store.Store. The error never contains hash.
func (db *DB) UserByTokenHash(ctx context.Context, hash string) (store.User, error) {
	var u store.User
	err := db.view(ctx, func(tx *bolt.Tx) error {
		var name []byte
		if hash != "" {
			name = tx.Bucket(bucketUsersByToken).Get([]byte(hash))
		}
		if name == nil {
			return fmt.Errorf("user by token: %w", store.ErrNotFound)
		}
		var err error
		u, err = getUser(tx.Bucket(bucketUsers), name)
		if err == nil && u.TokenHash != hash {
			err = fmt.Errorf("index users_by_token points to user %q with another token", name)
		}
		return err
	})
	if err != nil {
		return store.User{}, err
	}
	return u, nil
}

// ListUsers implements store.Store.
func (db *DB) ListUsers(ctx context.Context) ([]store.User, error) {
	var out []store.User
	err := db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUsers).ForEach(func(k, data []byte) error {
			u, err := decodeUserRecord(k, data)
			if err != nil {
				return err
			}
			out = append(out, u)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteUser implements store.Store. The user's VPSs are not touched.
func (db *DB) DeleteUser(ctx context.Context, name string) error {
	err := db.update(ctx, func(tx *bolt.Tx) error {
		users, byToken := tx.Bucket(bucketUsers), tx.Bucket(bucketUsersByToken)
		u, err := getUser(users, []byte(name))
		if err != nil {
			return err
		}
		if bytes.Equal(byToken.Get([]byte(u.TokenHash)), []byte(name)) {
			if err := byToken.Delete([]byte(u.TokenHash)); err != nil {
				return err
			}
		}
		return users.Delete([]byte(name))
	})
	if err != nil {
		return fmt.Errorf("delete user %q: %w", name, err)
	}
	return nil
}
