package store

import "errors"

// Sentinel errors returned (wrapped) by Store implementations and the
// helpers of this package. Match them with errors.Is.
var (
	// ErrNotFound: no record with that key.
	ErrNotFound = errors.New("not found")
	// ErrExists: a record with that key already exists.
	ErrExists = errors.New("already exists")
	// ErrNameTaken: another VPS already has that name.
	ErrNameTaken = errors.New("name already taken")
	// ErrNoFreePort: every port of the SSH port range is allocated.
	ErrNoFreePort = errors.New("no free ssh port")
	// ErrInvalid: a field has a value the store refuses (bad name, bad key).
	ErrInvalid = errors.New("invalid value")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
)
