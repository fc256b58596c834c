package cli

import (
	"context"
	"fmt"

	"github.com/kohakuriver/kohakuriver/gateway/api"
)

// UserCmd groups the user commands (admins only).
type UserCmd struct {
	Add    UserAddCmd    `cmd:"" help:"Create a user and print its API token (shown only once)."`
	List   UserListCmd   `cmd:"" aliases:"ls" help:"List users."`
	Remove UserRemoveCmd `cmd:"" aliases:"rm" help:"Delete a user (it must own no VPS)."`
}

// Help is the detailed help.
func (UserCmd) Help() string {
	return `Examples:
  kohakuriver user add alice            # give alice the token; she runs kohakuriver login
  kohakuriver user add bob --admin
  kohakuriver user list
  kohakuriver user remove alice`
}

// UserAddCmd creates a user.
type UserAddCmd struct {
	Name  string `arg:"" help:"User name (a-z, 0-9, '_', '-')."`
	Admin bool   `help:"Make the user an admin."`
}

// Run creates the user and prints its token.
func (c *UserAddCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	u, err := cl.API.CreateUser(ctx, c.Name, c.Admin)
	if err != nil {
		return fmt.Errorf("create user %s: %w", c.Name, err)
	}
	if out.JSON {
		return out.json(u)
	}
	role := "user"
	if u.Admin {
		role = "admin"
	}
	fmt.Fprintf(out.W, "Created %s %s. Its API token, shown only now:\n\n  %s\n\n", role, u.Name, u.Token)
	fmt.Fprintf(out.W, "Give it to %s, who runs: kohakuriver login -H %s\n", u.Name, cl.Host)
	return nil
}

// UserListCmd lists users.
type UserListCmd struct{}

// Run lists the users.
func (c *UserListCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	users, err := cl.API.Users(ctx)
	if err != nil {
		return fmt.Errorf("list users: %w", err)
	}
	if out.JSON {
		if users == nil {
			users = []api.UserInfo{}
		}
		return out.json(users)
	}
	now := env.Now()
	t := newTable(out.W, "NAME", "ADMIN", "CREATED")
	for _, u := range users {
		admin := "no"
		if u.Admin {
			admin = "yes"
		}
		t.row(u.Name, admin, ago(now, u.CreatedAt))
	}
	return t.flush()
}

// UserRemoveCmd deletes a user.
type UserRemoveCmd struct {
	Name string `arg:"" help:"User name."`
}

// Run deletes the user.
func (c *UserRemoveCmd) Run(ctx context.Context, out *Output, cl *Cluster) error {
	if err := cl.API.DeleteUser(ctx, c.Name); err != nil {
		return fmt.Errorf("delete user %s: %w", c.Name, err)
	}
	if out.JSON {
		return out.json(map[string]string{"deleted": c.Name})
	}
	fmt.Fprintf(out.W, "User %s deleted; its token no longer works.\n", c.Name)
	return nil
}
