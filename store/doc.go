// Package store defines the cluster's domain records (VPSs, nodes, users, the
// gateway's identity) and the Store interface every backend implements.
//
// # Basics
//
// The package imports nothing heavy: no database. The embedded bbolt backend
// lives in store/embedded; a distributed backend (etcd) can implement the
// same interface later and serve several gateway replicas without changes to
// the gateway, the API or the agents.
//
// Records are plain values. A value returned by a Store is a copy owned by
// the caller; changing it changes nothing stored. All writes go through
// Create*/Update*/Put*/Delete* methods, each of which is one atomic
// transaction in the backend.
//
// # Caveats
//
//   - SSH ports are allocated by CreateVPS inside the same transaction that
//     writes the record, so no crash can leave two VPSs on one port.
//   - Watch delivers changes after they are committed. A consumer that falls
//     behind receives an EventResync and must re-read what it needs.
package store
