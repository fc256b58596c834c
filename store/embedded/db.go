package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/kohakuriver/kohakuriver/store"
)

// ErrLocked is returned (wrapped, with the path) by Open when another
// process holds the database file for longer than Options.Timeout.
var ErrLocked = errors.New("store is in use by another process")

// Defaults used for zero Options fields.
const (
	DefaultPortMin = 9000
	DefaultPortMax = 9999
	DefaultTimeout = 2 * time.Second
)

// schemaVersion is the layout described in doc.go. Open refuses files with
// a newer version rather than misreading them.
const schemaVersion = 1

var (
	bucketVPS          = []byte("vps")
	bucketVPSByName    = []byte("vps_by_name")
	bucketVPSByPort    = []byte("vps_by_port")
	bucketVPSByKey     = []byte("vps_by_key")
	bucketNodes        = []byte("nodes")
	bucketUsers        = []byte("users")
	bucketUsersByToken = []byte("users_by_token")
	bucketMeta         = []byte("meta")

	allBuckets = [][]byte{
		bucketVPS, bucketVPSByName, bucketVPSByPort, bucketVPSByKey,
		bucketNodes, bucketUsers, bucketUsersByToken, bucketMeta,
	}

	metaSchemaVersion = []byte("schema_version")
	metaIdentity      = []byte("identity")
	metaLastPort      = []byte("last_port")
)

// Options configures Open. A nil *Options means all defaults.
type Options struct {
	// PortMin and PortMax bound the SSH ports CreateVPS allocates,
	// inclusive. Zero means DefaultPortMin and DefaultPortMax.
	PortMin, PortMax int
	// Timeout is how long Open waits for another process to release the
	// file lock before failing with ErrLocked. Zero means DefaultTimeout;
	// a negative value waits indefinitely.
	Timeout time.Duration
	// Logger receives the store's own messages. Nil discards them.
	Logger *slog.Logger
}

// DB is a store.Store backed by one bbolt file. All methods are safe for
// concurrent use.
type DB struct {
	// Set by Open, read-only afterwards.
	bdb              *bolt.DB
	path             string
	portMin, portMax int
	log              *slog.Logger
	now              func() time.Time // tests replace it before first use
	hub              *hub

	// wmu serialises write transactions around bdb.Update so that the
	// OnCommit handlers, which bbolt runs after releasing its own writer
	// lock, publish events in commit order. It costs nothing: bbolt allows
	// one writer at a time anyway. Lock order: wmu, then bbolt's locks,
	// then hub.mu.
	wmu sync.Mutex

	// idMu serialises Identity's load-or-generate so generate runs at most
	// once per missing identity. generate runs under idMu but outside any
	// transaction. Lock order: idMu before wmu.
	idMu sync.Mutex
	// ident caches the stored identity once read or created; it never
	// changes afterwards. The value pointed to is never modified.
	ident atomic.Pointer[store.Identity]

	closed atomic.Bool
}

var _ store.Store = (*DB)(nil)

// Open opens or creates the database at path. A missing parent directory is
// created with mode 0700 and a missing file with mode 0600. The caller must
// Close the DB.
func Open(path string, opts *Options) (*DB, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.PortMin == 0 {
		o.PortMin = DefaultPortMin
	}
	if o.PortMax == 0 {
		o.PortMax = DefaultPortMax
	}
	if o.PortMin < 1 || o.PortMax > 65535 || o.PortMin > o.PortMax {
		return nil, fmt.Errorf("open store: %w: ssh port range %d-%d must lie within 1-65535 with min <= max",
			store.ErrInvalid, o.PortMin, o.PortMax)
	}
	switch {
	case o.Timeout == 0:
		o.Timeout = DefaultTimeout
	case o.Timeout < 0:
		o.Timeout = 0 // bbolt: wait indefinitely
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}

	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: o.Timeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w (%s)", ErrLocked, path)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db := &DB{
		bdb:     bdb,
		path:    path,
		portMin: o.PortMin,
		portMax: o.PortMax,
		log:     o.Logger.With("store", path),
		now:     func() time.Time { return time.Now().UTC() },
	}
	db.hub = newHub(db.log)
	if err := db.init(); err != nil {
		_ = bdb.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db.log.Debug("store opened", "port_min", db.portMin, "port_max", db.portMax)
	return db, nil
}

// init creates missing buckets and checks the schema version.
func (db *DB) init() error {
	return db.bdb.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		raw := meta.Get(metaSchemaVersion)
		if raw == nil {
			return meta.Put(metaSchemaVersion, []byte(strconv.Itoa(schemaVersion)))
		}
		v, err := strconv.Atoi(string(raw))
		if err != nil {
			return fmt.Errorf("bad schema version %q", raw)
		}
		if v > schemaVersion {
			return fmt.Errorf("schema version %d is newer than this binary supports (%d)", v, schemaVersion)
		}
		return nil
	})
}

// Path returns the database file's path.
func (db *DB) Path() string { return db.path }

// Close closes every Watch channel, waits for running transactions and
// closes the file. Later calls to other methods return store.ErrClosed;
// calling Close again returns nil.
func (db *DB) Close() error {
	if !db.closed.CompareAndSwap(false, true) {
		return nil
	}
	db.hub.close()
	if err := db.bdb.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	db.log.Debug("store closed")
	return nil
}

// Watch implements store.Store. The channel buffers 256 events; a watcher
// with that many unread loses later events and receives one EventResync
// after the buffered ones (see doc.go). The channel is closed when ctx is
// done or the DB is closed; after Close, Watch returns a closed channel.
func (db *DB) Watch(ctx context.Context) <-chan store.Event {
	if db.closed.Load() {
		ch := make(chan store.Event)
		close(ch)
		return ch
	}
	return db.hub.watch(ctx)
}

// ready reports why an operation must not start: the DB is closed or ctx is
// done.
func (db *DB) ready(ctx context.Context) error {
	if db.closed.Load() {
		return store.ErrClosed
	}
	return ctx.Err()
}

// view runs fn in a read transaction.
func (db *DB) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := db.ready(ctx); err != nil {
		return err
	}
	return mapClosed(db.bdb.View(fn))
}

// update runs fn in a write transaction; see DB.wmu. fn registers its events
// with db.emit.
func (db *DB) update(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := db.ready(ctx); err != nil {
		return err
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	return mapClosed(db.bdb.Update(fn))
}

// emit publishes ev to the watchers once tx commits; nothing is published
// if it rolls back.
func (db *DB) emit(tx *bolt.Tx, ev store.Event) {
	tx.OnCommit(func() { db.hub.publish(ev) })
}

// mapClosed turns bbolt's "database not open", which a transaction started
// while Close ran can see, into store.ErrClosed.
func mapClosed(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return store.ErrClosed
	}
	return err
}
