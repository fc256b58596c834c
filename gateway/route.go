package gateway

import (
	"fmt"
	"strings"

	"github.com/kohakuriver/kohakuriver/store"
)

// maxUsernameLen bounds the SSH user name we parse. OpenSSH allows long user
// names, but a routing name never needs more than "login@vps-name".
const maxUsernameLen = 128

// Target is what an SSH user name on the main gateway port asks for.
//
// The grammar (see README.md, "Routing"):
//
//	username = TASK | LOGIN "@" TASK | LOGIN
//	TASK     = task id (19 digits) | VPS name ([a-z0-9][a-z0-9-]{0,62})
//	LOGIN    = user inside the VPS ([a-z_][a-z0-9_-]{0,31})
//
// OpenSSH splits "ssh root@123@host" at the last '@', so the server sees
// "root@123". A bare word is ambiguous between TASK and LOGIN: it is first
// looked up as a VPS, and only when no VPS has that name is it taken as the
// login user of a key route.
type Target struct {
	// Login is the user inside the VPS; empty means the VPS's default.
	Login string
	// Ref is the task id or VPS name; empty for a key route.
	Ref string
	// Explicit is true for LOGIN@TASK: the user named the VPS, so a lookup
	// miss is an error, never a key route.
	Explicit bool
	// MaybeLogin is true when a bare word could also be a login user, so a
	// key route is possible when Ref names no VPS.
	MaybeLogin bool
}

// ParseTarget parses an SSH user name received on the main gateway port.
// Errors are user-facing: they say what was wrong and what to write.
func ParseTarget(username string) (Target, error) {
	if username == "" {
		return Target{}, fmt.Errorf("empty user name: connect with ssh <task>@HOST or ssh <user>@<task>@HOST")
	}
	if len(username) > maxUsernameLen {
		return Target{}, fmt.Errorf("user name is longer than %d characters", maxUsernameLen)
	}
	if strings.Count(username, "@") > 1 {
		return Target{}, fmt.Errorf("user name %q has more than one '@': write <user>@<task>", printable(username))
	}
	if login, ref, ok := strings.Cut(username, "@"); ok {
		if err := store.ValidateLoginUser(login); err != nil {
			return Target{}, fmt.Errorf("login user %q is not a valid user name", printable(login))
		}
		if !isTaskRef(ref) {
			return Target{}, fmt.Errorf("%q is not a task id or VPS name", printable(ref))
		}
		return Target{Login: login, Ref: ref, Explicit: true}, nil
	}
	t := Target{}
	if isTaskRef(username) {
		t.Ref = username
	}
	if store.ValidateLoginUser(username) == nil {
		t.MaybeLogin = true
	}
	if t.Ref == "" && !t.MaybeLogin {
		return Target{}, fmt.Errorf("%q is neither a task id, a VPS name nor a login user", printable(username))
	}
	return t, nil
}

// isTaskRef reports whether s can name a VPS: a task id or a valid name.
func isTaskRef(s string) bool {
	return store.IsTaskID(s) || store.ValidateName(s) == nil
}

// printable makes client-supplied text safe to echo back in a banner or a
// log line: control characters become '?', and it is cut at 64 bytes.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
