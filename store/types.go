package store

import "time"

// VPSStatus is the lifecycle state of a VPS as the host last saw it.
type VPSStatus string

const (
	// StatusPending: the record exists; the node has not yet reported the
	// container running (creating, or restarting).
	StatusPending VPSStatus = "pending"
	// StatusRunning: the container and its sshd are up.
	StatusRunning VPSStatus = "running"
	// StatusStopped: stopped on request; the filesystem, keys, host key and
	// SSH port are kept.
	StatusStopped VPSStatus = "stopped"
	// StatusLost: the VPS's node stopped heartbeating. It returns to its
	// previous state when the node reports it again.
	StatusLost VPSStatus = "lost"
	// StatusFailed: the node could not create or start the container;
	// Message says why.
	StatusFailed VPSStatus = "failed"
)

// KeyMode records how the VPS's SSH keys were chosen at creation (the spec's
// "SSH key modes").
type KeyMode string

const (
	KeyModeUpload    KeyMode = "upload"    // the user's ~/.ssh/id_*.pub
	KeyModeGenerated KeyMode = "generated" // a pair made on the user's machine
	KeyModeFile      KeyMode = "file"      // --public-key-file
	KeyModeString    KeyMode = "string"    // --public-key-string
	KeyModeNone      KeyMode = "none"      // no key: the image's own auth
)

// DefaultLoginUser is the user inside a VPS when none is given.
const DefaultLoginUser = "root"

// AuthorizedKey is one public key allowed to log in to a VPS.
type AuthorizedKey struct {
	// Line is the normalised authorized_keys line: "TYPE BASE64 [COMMENT]",
	// without options. See ParseAuthorizedKey.
	Line string `json:"line"`
	// Fingerprint is the key's SHA256 fingerprint ("SHA256:..."), the index
	// used for key routing.
	Fingerprint string `json:"fingerprint"`
}

// VPS is one user's container with SSH access.
type VPS struct {
	TaskID   string    `json:"task_id"`        // 19-digit snowflake, see NewTaskID
	Name     string    `json:"name,omitempty"` // optional, unique, see ValidateName
	Owner    string    `json:"owner"`          // user name
	Node     string    `json:"node"`           // node name
	Status   VPSStatus `json:"status"`
	Image    string    `json:"image"`
	Cores    int       `json:"cores,omitempty"`
	MemoryMB int64     `json:"memory_mb,omitempty"`
	// SSHPort is the gateway port routed to this VPS; assigned by CreateVPS
	// and kept until DeleteVPS.
	SSHPort int `json:"ssh_port"`
	// LoginUser is the user whose authorized_keys the agent writes.
	LoginUser string          `json:"login_user"`
	KeyMode   KeyMode         `json:"key_mode"`
	Keys      []AuthorizedKey `json:"keys"`
	// HostKeys are the VPS sshd's public host keys in authorized_keys
	// format, reported by the agent when the VPS first comes up. The
	// gateway refuses the hop when the sshd shows any other key.
	HostKeys []string `json:"host_keys,omitempty"`
	// Message explains the status (an error from the node, for example).
	Message   string    `json:"message,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Ref returns the name if there is one, else the task id: what to show users.
func (v VPS) Ref() string {
	if v.Name != "" {
		return v.Name
	}
	return v.TaskID
}

// HasKey reports whether fingerprint is one of the VPS's authorized keys.
func (v VPS) HasKey(fingerprint string) bool {
	for _, k := range v.Keys {
		if k.Fingerprint == fingerprint {
			return true
		}
	}
	return false
}

// NodeStatus is whether a node's agent is heartbeating.
type NodeStatus string

const (
	NodeOnline  NodeStatus = "online"
	NodeOffline NodeStatus = "offline"
)

// Node is one machine running an agent.
type Node struct {
	Name string `json:"name"`
	// Address is the agent's host:port for the relay and its API.
	Address string `json:"address"`
	// RelaySocket is the agent's handoff socket (a unix socket path) and
	// BootID the boot id of the kernel the agent runs on. The gateway tries
	// the socket only on a machine with the same boot id, before relaying
	// through Address. Both empty when the agent has no such socket.
	RelaySocket   string     `json:"relay_socket,omitempty"`
	BootID        string     `json:"boot_id,omitempty"`
	Status        NodeStatus `json:"status"`
	Cores         int        `json:"cores"`
	MemoryMB      int64      `json:"memory_mb"`
	LastHeartbeat time.Time  `json:"last_heartbeat"`
	RegisteredAt  time.Time  `json:"registered_at"`
}

// User is an account of the host API.
type User struct {
	Name  string `json:"name"`
	Admin bool   `json:"admin"`
	// TokenHash is the hex SHA-256 of the user's API token; the token itself
	// is never stored.
	TokenHash string    `json:"token_hash"`
	CreatedAt time.Time `json:"created_at"`
}

// Identity is the gateway's long-lived key material, generated once.
type Identity struct {
	// HostKeys are PEM-encoded (OpenSSH format) private host keys:
	// ed25519 first, then ecdsa and rsa for old clients.
	HostKeys [][]byte `json:"host_keys"`
	// UserCA is the PEM-encoded private key that signs the short-lived user
	// certificates the gateway presents to VPS sshds.
	UserCA []byte `json:"user_ca"`
	// ClusterToken authenticates agents to the host and the host to agents.
	ClusterToken string    `json:"cluster_token"`
	CreatedAt    time.Time `json:"created_at"`
}

// EventKind says what changed.
type EventKind int

const (
	EventVPSPut EventKind = iota + 1
	EventVPSDeleted
	EventNodePut
	EventNodeDeleted
	// EventResync: events were dropped because the watcher fell behind;
	// re-read the state.
	EventResync
)

// Event is one committed change. VPS is set for EventVPS*, Node for EventNode*.
type Event struct {
	Kind EventKind
	VPS  VPS
	Node Node
}
