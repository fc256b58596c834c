package docker

import "errors"

// Sentinel errors. Returned errors wrap them with detail; match with
// errors.Is.
var (
	// ErrUnreachable is returned by New when the Docker engine does not
	// answer.
	ErrUnreachable = errors.New("docker engine not reachable")

	// ErrNotFound is returned when the task has no container on this node
	// (never created, removed, or a container of that name that this node
	// does not manage).
	ErrNotFound = errors.New("no such vps container")

	// ErrNotRunning is returned by SSHAddr and Exec when the task's
	// container exists but is not running.
	ErrNotRunning = errors.New("vps container not running")

	// ErrExists is returned by Create when the task already has a
	// container.
	ErrExists = errors.New("vps container already exists")

	// ErrImageNotFound is returned by Create when the image is not present
	// on this node. Nothing is pulled.
	ErrImageNotFound = errors.New("vps image not found")

	// ErrNoUser is returned when the login user does not exist in the
	// container's /etc/passwd, or its home directory does not exist.
	ErrNoUser = errors.New("login user not found in vps")

	// ErrNoSSHD is returned by Create, Start and Restart when the container
	// exited or its sshd did not answer with an SSH banner in time.
	ErrNoSSHD = errors.New("no working sshd")
)
