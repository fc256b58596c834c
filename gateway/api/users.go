package api

import (
	"errors"
	"net/http"

	"github.com/kohakuriver/kohakuriver/store"
)

// GET /api/v1/whoami
func (srv *Server) whoami(w http.ResponseWriter, r *http.Request) error {
	u := userFrom(r.Context())
	writeJSON(w, http.StatusOK, Whoami{Name: u.Name, Admin: u.Admin})
	return nil
}

// GET /api/v1/gateway
func (srv *Server) gatewayInfo(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, srv.gateway)
	return nil
}

// POST /api/v1/users (admin): the new token is in this answer only.
func (srv *Server) createUser(w http.ResponseWriter, r *http.Request) error {
	var req CreateUserRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := store.ValidateUserName(req.Name); err != nil {
		return errorf(http.StatusBadRequest, "%s", err)
	}
	token := NewToken()
	u, err := srv.st.CreateUser(r.Context(), store.User{
		Name: req.Name, Admin: req.Admin, TokenHash: HashToken(token), CreatedAt: srv.now().UTC(),
	})
	if errors.Is(err, store.ErrExists) {
		return errorf(http.StatusConflict, "user %q already exists; pick another name, or delete it first to issue a new token", req.Name)
	}
	if err != nil {
		return err
	}
	info(r).log.Info("user created", "user", userFrom(r.Context()).Name, "new_user", u.Name, "admin", u.Admin)
	writeJSON(w, http.StatusCreated, NewUser{Name: u.Name, Admin: u.Admin, Token: token})
	return nil
}

// GET /api/v1/users (admin)
func (srv *Server) listUsers(w http.ResponseWriter, r *http.Request) error {
	users, err := srv.st.ListUsers(r.Context())
	if err != nil {
		return err
	}
	out := make([]UserInfo, 0, len(users))
	for _, u := range users {
		out = append(out, UserInfo{Name: u.Name, Admin: u.Admin, CreatedAt: u.CreatedAt})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// DELETE /api/v1/users/{name} (admin). Refused for the caller itself (an
// admin could lock everyone out) and for users who still own VPSs (they
// would be orphaned).
func (srv *Server) deleteUser(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	me, name := userFrom(ctx), r.PathValue("name")
	if name == me.Name {
		return errorf(http.StatusConflict, "you cannot delete your own user; use another admin's token")
	}
	if _, err := srv.st.User(ctx, name); errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, "no user %q; list users with GET /api/v1/users", name)
	} else if err != nil {
		return err
	}
	// No VPS of this user's may be stored from the count to the deletion.
	srv.owners.Lock()
	defer srv.owners.Unlock()
	all, err := srv.st.ListVPS(ctx)
	if err != nil {
		return err
	}
	owned := 0
	for _, v := range all {
		if v.Owner == name {
			owned++
		}
	}
	if owned > 0 {
		return errorf(http.StatusConflict, "user %q still owns %d VPS(s); delete them first", name, owned)
	}
	if err := srv.st.DeleteUser(ctx, name); errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, "no user %q", name)
	} else if err != nil {
		return err
	}
	info(r).log.Info("user deleted", "user", me.Name, "deleted_user", name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
