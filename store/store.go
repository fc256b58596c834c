package store

import "context"

// Store is the host's state. Every method is safe for concurrent use. Methods
// return the sentinel errors of errors.go (wrapped), matched with errors.Is.
type Store interface {
	// CreateVPS stores a new VPS. It fills TaskID (NewTaskID) when empty,
	// CreatedAt/UpdatedAt, LoginUser (DefaultLoginUser) when empty, and
	// allocates the lowest free SSHPort of the configured range, all in one
	// transaction. Errors: ErrInvalid, ErrNameTaken, ErrExists, ErrNoFreePort.
	CreateVPS(ctx context.Context, v VPS) (VPS, error)
	// VPS finds a VPS by task id or by name. Errors: ErrNotFound.
	VPS(ctx context.Context, ref string) (VPS, error)
	// VPSByPort finds the VPS that owns an SSH port. Errors: ErrNotFound.
	VPSByPort(ctx context.Context, port int) (VPS, error)
	// VPSByKey lists the VPSs whose Keys contain the fingerprint (any
	// status), in task id order.
	VPSByKey(ctx context.Context, fingerprint string) ([]VPS, error)
	// ListVPS lists every VPS in task id order.
	ListVPS(ctx context.Context) ([]VPS, error)
	// UpdateVPS applies fn to the stored VPS inside one transaction and
	// stores the result; if fn returns an error nothing changes. fn must not
	// block or do I/O. TaskID, SSHPort and CreatedAt cannot be changed by fn.
	// Errors: ErrNotFound, ErrNameTaken, ErrInvalid, or fn's error.
	UpdateVPS(ctx context.Context, taskID string, fn func(*VPS) error) (VPS, error)
	// DeleteVPS removes the VPS and frees its port. Errors: ErrNotFound.
	DeleteVPS(ctx context.Context, taskID string) error

	// UpsertNode creates the node or applies fn to the existing one
	// (fn receives the zero Node with only Name set when it is new).
	UpsertNode(ctx context.Context, name string, fn func(*Node) error) (Node, error)
	// Node finds a node by name. Errors: ErrNotFound.
	Node(ctx context.Context, name string) (Node, error)
	// ListNodes lists every node by name.
	ListNodes(ctx context.Context) ([]Node, error)
	// DeleteNode removes a node. Errors: ErrNotFound.
	DeleteNode(ctx context.Context, name string) error

	// CreateUser stores a new user. Errors: ErrInvalid, ErrExists.
	CreateUser(ctx context.Context, u User) (User, error)
	// User finds a user by name. Errors: ErrNotFound.
	User(ctx context.Context, name string) (User, error)
	// UserByTokenHash finds the user whose TokenHash equals hash.
	// Errors: ErrNotFound.
	UserByTokenHash(ctx context.Context, hash string) (User, error)
	// ListUsers lists users by name.
	ListUsers(ctx context.Context) ([]User, error)
	// DeleteUser removes a user. Errors: ErrNotFound.
	DeleteUser(ctx context.Context, name string) error

	// Identity returns the stored gateway identity, calling generate and
	// storing its result first if there is none. Once stored it never
	// changes.
	Identity(ctx context.Context, generate func() (Identity, error)) (Identity, error)

	// Watch returns committed changes from now on until ctx is done or the
	// store is closed, then the channel is closed. It never blocks writers:
	// a watcher that falls behind gets EventResync.
	Watch(ctx context.Context) <-chan Event

	// Close releases the store. Pending Watch channels are closed.
	Close() error
}
