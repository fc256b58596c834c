package netns

import "errors"

var (
	// ErrSameNamespace is returned when the target is the caller's own
	// network namespace. The callers' purpose is to reach a container's
	// loopback; when a container shares the node's namespace (host
	// networking), its loopback is the node's, and Dial refuses rather
	// than connect to whatever listens there.
	ErrSameNamespace = errors.New("netns: target is this process's own network namespace")
	// ErrPermission wraps the failure to open or enter a namespace for
	// lack of privileges (EPERM, EACCES): it will not change for the life
	// of the process, so callers may stop trying.
	ErrPermission = errors.New("not permitted to enter network namespaces (needs CAP_SYS_ADMIN)")
	// ErrNotLiteral is returned for an address whose host is not an IP
	// literal: resolving a name would read the node's resolver
	// configuration from inside the namespace, and a name with addresses
	// of both families is dialled by racing goroutines on other threads,
	// outside the namespace.
	ErrNotLiteral = errors.New("netns: the address must be an IP literal and port")
	// ErrUnsupported is returned where network namespaces do not exist.
	ErrUnsupported = errors.New("netns: network namespaces are a Linux feature")
)
