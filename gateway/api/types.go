package api

import (
	"context"
	"io"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

// VPSSpec is what the host asks a node to create.
type VPSSpec struct {
	// Node names the agent the create is meant for; an agent refuses a
	// create for another node. The body is signed (agent/clusterauth) but
	// every agent shares the token, so without it a create captured on its
	// way to one node could be replayed to another within the replay window.
	Node      string `json:"node"`
	TaskID    string `json:"task_id"`
	Image     string `json:"image"`
	LoginUser string `json:"login_user"`
	Cores     int    `json:"cores,omitempty"`
	MemoryMB  int64  `json:"memory_mb,omitempty"`
	// AuthorizedKeys are full authorized_keys lines for LoginUser: the
	// user's keys followed by the gateway's cert-authority line.
	AuthorizedKeys []string `json:"authorized_keys"`
}

// VPSState is a node's view of one VPS: in answers to NodeAgent calls and in
// agent reports.
type VPSState struct {
	TaskID  string `json:"task_id"`
	Running bool   `json:"running"`
	// HostKeys are the VPS sshd's public host keys in authorized_keys
	// format ("TYPE BASE64 [COMMENT]").
	HostKeys []string `json:"host_keys,omitempty"`
	// Message explains a state that is not what was asked for.
	Message string `json:"message,omitempty"`
}

// NodeAgent is what the host asks of a node's agent. The implementation
// (agent/control.Client) calls the agent at node.Address; every method is
// safe for concurrent use and bounds itself with ctx. Errors carry a
// message that may be shown to the API user.
type NodeAgent interface {
	CreateVPS(ctx context.Context, node store.Node, spec VPSSpec) (VPSState, error)
	StartVPS(ctx context.Context, node store.Node, taskID string) (VPSState, error)
	StopVPS(ctx context.Context, node store.Node, taskID string) error
	RestartVPS(ctx context.Context, node store.Node, taskID string) (VPSState, error)
	// DeleteVPS removes the container; deleting one that does not exist
	// succeeds.
	DeleteVPS(ctx context.Context, node store.Node, taskID string) error
	// SetKeys replaces loginUser's authorized_keys with authorizedKeys.
	SetKeys(ctx context.Context, node store.Node, taskID, loginUser string, authorizedKeys []string) error
	// Exec runs cmd in the VPS, copying its output to stdout and stderr
	// (possibly from different goroutines, never after Exec returns), and
	// returns its exit code.
	Exec(ctx context.Context, node store.Node, taskID string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error)
}

// AgentReport is the body of POST /api/v1/agent/register and
// /api/v1/agent/heartbeat: who the node is and every VPS container it has.
type AgentReport struct {
	Name     string     `json:"name"`
	Address  string     `json:"address"` // host:port of the agent's API and relay
	Cores    int        `json:"cores"`
	MemoryMB int64      `json:"memory_mb"`
	VPS      []VPSState `json:"vps"`
	// RelaySocket and BootID name the agent's handoff socket and the kernel
	// it runs on; both empty when it has none (see store.Node).
	RelaySocket string `json:"relay_socket,omitempty"`
	BootID      string `json:"boot_id,omitempty"`
}

// CreateVPSRequest is the body of POST /api/v1/vps. Empty optional fields
// take defaults: the host's DefaultImage, the least loaded online node,
// store.DefaultLoginUser, no CPU or memory limit.
type CreateVPSRequest struct {
	Name      string        `json:"name,omitempty"`
	Node      string        `json:"node,omitempty"`
	Image     string        `json:"image,omitempty"`
	Cores     int           `json:"cores,omitempty"`
	MemoryMB  int64         `json:"memory_mb,omitempty"`
	LoginUser string        `json:"login_user,omitempty"`
	KeyMode   store.KeyMode `json:"key_mode"`
	// PublicKeys are authorized_keys lines, one key each. KeyModeNone
	// requires none; every other mode at least one.
	PublicKeys []string `json:"public_keys"`
}

// KeysRequest is the body of POST /api/v1/vps/{ref}/keys.
type KeysRequest struct {
	PublicKeys []string `json:"public_keys"`
}

// ExecRequest is the body of POST /api/v1/vps/{ref}/exec.
type ExecRequest struct {
	Cmd []string `json:"cmd"`
	// Stdin is the command's whole standard input, base64 (standard
	// encoding); empty means none.
	Stdin string `json:"stdin,omitempty"`
}

// ExecFrame is one line of the NDJSON answer to exec: a chunk of output
// (Stream and Data), or the last line, with ExitCode or Error.
type ExecFrame struct {
	Stream   string `json:"stream,omitempty"` // "stdout" or "stderr"
	Data     []byte `json:"data,omitempty"`   // base64 in JSON
	ExitCode *int   `json:"exit_code,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Whoami is the answer to GET /api/v1/whoami.
type Whoami struct {
	Name  string `json:"name"`
	Admin bool   `json:"admin"`
}

// GatewayInfo is the answer to GET /api/v1/gateway: what a client pins in
// known_hosts and where it connects.
type GatewayInfo struct {
	HostKeys   []string `json:"host_keys"` // authorized_keys format
	SSHPort    int      `json:"ssh_port"`
	PublicHost string   `json:"public_host"`
}

// CreateUserRequest is the body of POST /api/v1/users.
type CreateUserRequest struct {
	Name  string `json:"name"`
	Admin bool   `json:"admin"`
}

// NewUser is the answer to POST /api/v1/users. Token is shown only here;
// the host keeps its hash.
type NewUser struct {
	Name  string `json:"name"`
	Admin bool   `json:"admin"`
	Token string `json:"token"`
}

// UserInfo is one user in GET /api/v1/users (never the token hash).
type UserInfo struct {
	Name      string    `json:"name"`
	Admin     bool      `json:"admin"`
	CreatedAt time.Time `json:"created_at"`
}

// NodeInfo is a node with the number of VPS records placed on it.
type NodeInfo struct {
	store.Node
	VPSCount int `json:"vps_count"`
}

// errorBody is the JSON shape of every error answer.
type errorBody struct {
	Error string `json:"error"`
}
