// Package embedded is the single-host store.Store backend: one bbolt file
// owned by the gateway process.
//
// # Basics
//
// Open takes an exclusive file lock on the database; a second process gets a
// clear error after Options.Timeout instead of hanging. Only the gateway
// opens the file: the CLI talks to the gateway's API, never to the database.
//
// Records are JSON values in these buckets:
//
//	vps             task id                        -> VPS JSON
//	vps_by_name     name                           -> task id
//	vps_by_port     port (uint16, big-endian)      -> task id
//	vps_by_key      fingerprint "\x00" task id     -> empty
//	nodes           node name                      -> Node JSON
//	users           user name                      -> User JSON
//	users_by_token  token hash                     -> user name
//	meta            "schema_version", "identity"   -> see meta.go
//
// Task ids are 19 decimal digits, so byte order of the vps bucket is task id
// order, and a prefix scan of vps_by_key for "fingerprint\x00" yields the
// VPSs holding that key in task id order.
//
// Every method that writes is one bbolt Update transaction: the record and
// all of its index entries change together or not at all, so no crash can
// leave them disagreeing. The invariants, which the tests check after
// killing a writer with SIGKILL, are:
//
//   - every vps record has exactly one vps_by_port entry pointing back to
//     it, one vps_by_name entry if it has a name, and one vps_by_key entry
//     per distinct key fingerprint; there are no other index entries;
//   - so no two VPSs share a port or a name;
//   - every users record has exactly one users_by_token entry pointing back
//     to it, and there are no others.
//
// Values returned to callers are freshly decoded or deep-copied: a caller
// may keep and modify them, and changing them changes nothing stored.
//
// # Ports
//
// CreateVPS allocates the first port of [Options.PortMin, Options.PortMax]
// after the one it handed out last (meta's last_port) that has no
// vps_by_port entry, wrapping around at PortMax, walking that index with a
// cursor (keys sort by port) inside the transaction that writes the record
// and last_port. The cost grows with the number of allocated ports after
// the start before the first gap, never with the size of the records. A
// port stays with its VPS until DeleteVPS removes the index entry; it is
// handed out again only once the allocation has gone round the range, so
// that connections meant for a deleted VPS do not reach the next one. VPSs
// keep their ports if the range is changed between runs: ports outside the
// range are simply not handed out again.
//
// # Watch
//
// Write transactions register their events with bbolt's Tx.OnCommit, so a
// watcher sees only committed changes. bbolt runs commit handlers after it
// releases its writer lock, so the DB serialises its own write transactions
// with a mutex to deliver events in commit order. Delivery never blocks a
// writer: each watcher has a channel buffering 256 events plus one slot
// reserved for EventResync. When a watcher has 256 unread events, further
// events are dropped and an EventResync is queued behind the buffered ones;
// a consumer that re-reads the state when it receives it has seen every
// dropped change (and may see some changes twice). Watch starts no
// goroutine until its context is done; Close closes the channels itself.
//
// # Caveats
//
//   - Transactions take no context and hold the single bbolt writer lock:
//     the functions passed to UpdateVPS and UpsertNode run inside the
//     transaction and must not block, do I/O or call back into the DB (that
//     deadlocks). Identity's generate func runs outside any transaction.
//   - Methods return store.ErrClosed after Close. Close waits for running
//     transactions and closes every Watch channel before the file.
//   - A record that no longer decodes (disk corruption, a newer schema) makes
//     reads that touch it fail with an error that names its key; Open refuses
//     a schema version newer than this package knows.
package embedded
