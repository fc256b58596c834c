package store

import (
	"fmt"
	"regexp"
)

var (
	nameRE      = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	taskIDRE    = regexp.MustCompile(`^[1-9][0-9]{18}$`)
	loginUserRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	userNameRE  = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)
)

// IsTaskID reports whether s has the shape of a task id (19 decimal digits).
func IsTaskID(s string) bool { return taskIDRE.MatchString(s) }

// ValidateName checks an optional VPS name: [a-z0-9][a-z0-9-]{0,62}, and not
// all digits (which would read as a task id).
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: VPS name %q must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit", ErrInvalid, name)
	}
	allDigits := true
	for _, r := range name {
		if r < '0' || r > '9' {
			allDigits = false
			break
		}
	}
	if allDigits {
		return fmt.Errorf("%w: VPS name %q must contain a letter or '-' so it cannot be mistaken for a task id", ErrInvalid, name)
	}
	return nil
}

// reservedNames may not name a new VPS. The first are the login users
// people type for key routing (`ssh root@host -p 8002`): a VPS of that
// name would take those logins, and one that takes no keys would answer
// them with its own password prompt. "config" and "connect" are
// subcommands of `kohakuriver ssh`, so `kohakuriver ssh config` could not
// reach a VPS of that name.
var reservedNames = map[string]bool{
	"root": true, "admin": true, "user": true, "ubuntu": true, "debian": true,
	"centos": true, "fedora": true, "ec2-user": true,
	"config": true, "connect": true,
}

// ValidateNewName is ValidateName for a VPS being created: it also refuses
// the reserved names. Records already stored keep their names; only
// creation checks this.
func ValidateNewName(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if reservedNames[name] {
		return fmt.Errorf("%w: VPS name %q is reserved (a common login user or a kohakuriver ssh subcommand); choose another", ErrInvalid, name)
	}
	return nil
}

// ValidateLoginUser checks a login user name inside a VPS (POSIX-ish, as
// useradd accepts by default).
func ValidateLoginUser(u string) error {
	if !loginUserRE.MatchString(u) {
		return fmt.Errorf("%w: login user %q must be 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_'", ErrInvalid, u)
	}
	return nil
}

// ValidateUserName checks an API user name.
func ValidateUserName(u string) error {
	if !userNameRE.MatchString(u) {
		return fmt.Errorf("%w: user name %q must be 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter", ErrInvalid, u)
	}
	return nil
}
