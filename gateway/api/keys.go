package api

import (
	"context"
	"net/http"
	"slices"
	"strings"

	"github.com/kohakuriver/kohakuriver/store"
)

// GET /api/v1/vps/{ref}/keys
func (srv *Server) listKeys(w http.ResponseWriter, r *http.Request) error {
	v, err := srv.lookupVPS(r.Context(), userFrom(r.Context()), r.PathValue("ref"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, nonNilKeys(v.Keys))
	return nil
}

// POST /api/v1/vps/{ref}/keys: adds keys, skipping ones already there (by
// fingerprint), and answers the full list.
func (srv *Server) addKeys(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	v, err := srv.lookupVPS(ctx, userFrom(ctx), r.PathValue("ref"))
	if err != nil {
		return err
	}
	var req KeysRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if len(req.PublicKeys) == 0 {
		return errorf(http.StatusBadRequest, "public_keys is empty; give at least one authorized_keys line")
	}
	if _, err := parseKeys(req.PublicKeys, nil); err != nil {
		return err // refuse bad input before touching the record
	}
	v, err = srv.st.UpdateVPS(ctx, v.TaskID, func(x *store.VPS) error {
		keys, err := parseKeys(req.PublicKeys, x.Keys)
		if err != nil {
			return err
		}
		x.Keys = keys
		return nil
	})
	if err != nil {
		return err
	}
	info(r).log.Info("vps keys added", "vps", v.TaskID, "keys", len(v.Keys))
	return srv.pushKeys(w, r, v, "added")
}

// DELETE /api/v1/vps/{ref}/keys/{fingerprint}: the fingerprint is
// "SHA256:..." path-escaped (base64 may hold '/'); the "SHA256:" prefix may
// be left out.
func (srv *Server) removeKey(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	v, err := srv.lookupVPS(ctx, userFrom(ctx), r.PathValue("ref"))
	if err != nil {
		return err
	}
	fp := r.PathValue("fingerprint")
	if !strings.HasPrefix(fp, "SHA256:") {
		fp = "SHA256:" + fp
	}
	v, err = srv.st.UpdateVPS(ctx, v.TaskID, func(x *store.VPS) error {
		i := slices.IndexFunc(x.Keys, func(k store.AuthorizedKey) bool { return k.Fingerprint == fp })
		if i < 0 {
			return errorf(http.StatusNotFound, "VPS %s has no key %s; list its keys with `kohakuriver vps keys %s`", x.Ref(), fp, x.Ref())
		}
		x.Keys = slices.Delete(x.Keys, i, i+1)
		return nil
	})
	if err != nil {
		return err
	}
	info(r).log.Info("vps key removed", "vps", v.TaskID, "fingerprint", fp)
	return srv.pushKeys(w, r, v, "removed")
}

// pushKeys answers the VPS's keys after a change, first handing the new
// authorized_keys to the node when the VPS runs. The store is already
// updated and the gateway reads keys from it at every login, so a change
// is in force for gateway logins even when the node is slow or fails; the
// 502 then says exactly that. Stopped VPSs get their keys at the next
// start (see bringUp).
func (srv *Server) pushKeys(w http.ResponseWriter, r *http.Request, v store.VPS, what string) error {
	if v.Status == store.StatusRunning {
		node, err := srv.onlineNode(r.Context(), v)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), keysTimeout)
			defer cancel()
			err = srv.agents.SetKeys(ctx, node, v.TaskID, v.LoginUser, srv.authorizedKeys(v))
			if err != nil {
				return nodeError(node.Name, "update authorized_keys inside the VPS", err,
					"the key is "+what+" at the gateway already; run the same command again to update the VPS itself")
			}
		} else {
			info(r).log.Warn("vps keys not pushed: node offline", "vps", v.TaskID, "node", v.Node)
		}
	}
	writeJSON(w, http.StatusOK, nonNilKeys(v.Keys))
	return nil
}

func nonNilKeys(keys []store.AuthorizedKey) []store.AuthorizedKey {
	if keys == nil {
		return []store.AuthorizedKey{}
	}
	return keys
}
