package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

// Limits on create requests.
const (
	maxKeys     = 100  // keys per VPS
	maxCores    = 1024 // sanity bound; the node's own capacity is checked too
	maxImageLen = 512
)

// hostKeyChangedMsg is VPS.Message when a started VPS's sshd shows host
// keys other than the pinned ones.
const hostKeyChangedMsg = "the VPS's sshd now presents a host key that differs from the one pinned at creation, " +
	"so the gateway refuses to connect to it; if the image or its keys were changed on purpose, delete and recreate the VPS"

// POST /api/v1/vps
//
// Everything in the request is validated before anything is stored. The
// record is created pending (the store allocates the task id and SSH port
// in the same transaction), then the node creates the container. When the
// node fails, the record is kept with StatusFailed and the node's message,
// so the user can see what happened and delete it, and the answer is 502
// (504 on timeout) with that message.
func (srv *Server) createVPS(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	u := userFrom(ctx)
	var req CreateVPSRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	v, err := srv.validateCreate(req)
	if err != nil {
		return err
	}
	node, err := srv.pickNode(ctx, req.Node, v.Cores, v.MemoryMB)
	if err != nil {
		return err
	}
	v.Node, v.Owner, v.Status = node.Name, u.Name, store.StatusPending
	v, err = srv.storeNewVPS(ctx, v)
	if err != nil {
		return err
	}
	log := info(r).log.With("user", u.Name, "vps", v.TaskID, "node", node.Name)
	log.Info("creating vps", "name", v.Name, "image", v.Image, "ssh_port", v.SSHPort)

	// The node's work goes on if the client goes away; the record must
	// still end running or failed, so the call gets its own context.
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), createTimeout)
	defer cancel()
	st, err := srv.agents.CreateVPS(opCtx, node, VPSSpec{
		TaskID: v.TaskID, Image: v.Image, LoginUser: v.LoginUser, Cores: v.Cores, MemoryMB: v.MemoryMB,
		AuthorizedKeys: srv.authorizedKeys(v),
	})
	if err == nil && !st.Running {
		err = errors.New(orDefault(st.Message, "the container was created but is not running"))
	}
	if err != nil {
		he := nodeError(node.Name, "create the VPS", err, "")
		if _, uerr := srv.st.UpdateVPS(opCtx, v.TaskID, func(x *store.VPS) error {
			x.Status, x.Message = store.StatusFailed, he.msg
			return nil
		}); uerr != nil {
			log.Error("cannot record failed create", "err", uerr)
		}
		log.Warn("vps create failed", "err", err)
		he.msg += fmt.Sprintf("; the record %s is kept with status failed so you can see this message: delete it with `kohakuriver vps delete %s`", v.Ref(), v.Ref())
		return he
	}
	v, err = srv.st.UpdateVPS(opCtx, v.TaskID, func(x *store.VPS) error {
		x.Status, x.Message, x.HostKeys = store.StatusRunning, "", st.HostKeys
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		// Deleted while the node was creating it: the container is an
		// orphan now; remove it too.
		if derr := srv.agents.DeleteVPS(opCtx, node, st.TaskID); derr != nil {
			log.Warn("cannot remove the container of a VPS deleted during create", "err", derr)
		}
		return errorf(http.StatusConflict, "the VPS was deleted while it was being created")
	}
	if err != nil {
		return err
	}
	if len(st.HostKeys) == 0 {
		log.Warn("node reported no host keys; nothing is pinned")
	}
	log.Info("vps running")
	writeJSON(w, http.StatusCreated, v)
	return nil
}

// storeNewVPS stores v for its owner, unless the owner has been deleted
// since the request was authenticated (see Server.owners).
func (srv *Server) storeNewVPS(ctx context.Context, v store.VPS) (store.VPS, error) {
	srv.owners.RLock()
	defer srv.owners.RUnlock()
	if _, err := srv.st.User(ctx, v.Owner); errors.Is(err, store.ErrNotFound) {
		return v, errorf(http.StatusUnauthorized, "user %q was deleted while the VPS was being created; nothing was created", v.Owner)
	} else if err != nil {
		return v, err
	}
	stored, err := srv.st.CreateVPS(ctx, v)
	if errors.Is(err, store.ErrNameTaken) {
		return v, errorf(http.StatusConflict, "a VPS named %q already exists; choose another name", v.Name)
	}
	return stored, err
}

// validateCreate checks req and returns the VPS to store (without node,
// owner and status).
func (srv *Server) validateCreate(req CreateVPSRequest) (store.VPS, error) {
	v := store.VPS{Name: req.Name, Image: req.Image, Cores: req.Cores, MemoryMB: req.MemoryMB,
		LoginUser: req.LoginUser, KeyMode: req.KeyMode}
	if v.Name != "" {
		if err := store.ValidateNewName(v.Name); err != nil {
			return v, invalid(err, "")
		}
	}
	if v.LoginUser == "" {
		v.LoginUser = store.DefaultLoginUser
	} else if err := store.ValidateLoginUser(v.LoginUser); err != nil {
		return v, invalid(err, "")
	}
	if v.Image == "" {
		v.Image = srv.defaultImage
	} else if len(v.Image) > maxImageLen || strings.IndexFunc(v.Image, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0 {
		return v, errorf(http.StatusBadRequest, "image must be a Docker image reference such as %q (no spaces, at most %d characters)", DefaultImage, maxImageLen)
	}
	if v.Cores < 0 || v.Cores > maxCores {
		return v, errorf(http.StatusBadRequest, "cores must be between 0 (no limit) and %d", maxCores)
	}
	if v.MemoryMB < 0 {
		return v, errorf(http.StatusBadRequest, "memory_mb must be 0 (no limit) or more")
	}
	switch v.KeyMode {
	case store.KeyModeUpload, store.KeyModeGenerated, store.KeyModeFile, store.KeyModeString:
		if len(req.PublicKeys) == 0 {
			return v, errorf(http.StatusBadRequest, "key_mode %q needs at least one key in public_keys (or use key_mode \"none\")", v.KeyMode)
		}
	case store.KeyModeNone:
		if len(req.PublicKeys) > 0 {
			return v, errorf(http.StatusBadRequest, "key_mode \"none\" takes no public_keys; remove them or choose another key_mode")
		}
	case "":
		return v, errorf(http.StatusBadRequest, "key_mode is required: one of upload, generated, file, string, none")
	default:
		return v, errorf(http.StatusBadRequest, "unknown key_mode %q: use one of upload, generated, file, string, none", v.KeyMode)
	}
	keys, err := parseKeys(req.PublicKeys, nil)
	if err != nil {
		return v, err
	}
	v.Keys = keys
	return v, nil
}

// parseKeys parses lines and returns have plus the keys not already in it
// (by fingerprint), at most maxKeys in all.
func parseKeys(lines []string, have []store.AuthorizedKey) ([]store.AuthorizedKey, error) {
	if len(lines) > maxKeys {
		return nil, errorf(http.StatusBadRequest, "at most %d public keys per VPS", maxKeys)
	}
	out := slices.Clone(have)
	for i, line := range lines {
		k, err := store.ParseAuthorizedKey(line)
		if err != nil {
			return nil, invalid(err, fmt.Sprintf("public_keys[%d]", i))
		}
		if !slices.ContainsFunc(out, func(o store.AuthorizedKey) bool { return o.Fingerprint == k.Fingerprint }) {
			out = append(out, k)
		}
	}
	if len(out) > maxKeys {
		return nil, errorf(http.StatusBadRequest, "at most %d public keys per VPS; remove some first", maxKeys)
	}
	return out, nil
}

// authorizedKeys returns the authorized_keys lines a VPS gets: the user's
// keys, the gateway's cert-authority line and the VPS's hop key line, which
// the gateway needs even for key_mode none.
func (srv *Server) authorizedKeys(v store.VPS) []string {
	lines := make([]string, 0, len(v.Keys)+2)
	for _, k := range v.Keys {
		lines = append(lines, k.Line)
	}
	lines = append(lines, srv.caLine)
	if srv.hopKeyLine != nil {
		lines = append(lines, srv.hopKeyLine(v.TaskID))
	}
	return lines
}

// pickNode returns the node named want, or when want is empty the online
// node with the fewest VPSs that can hold cores and memMB (ties: by name).
// A named node that is offline is refused rather than replaced: the user
// asked for it.
func (srv *Server) pickNode(ctx context.Context, want string, cores int, memMB int64) (store.Node, error) {
	fits := func(n store.Node) bool {
		return (n.Cores == 0 || cores <= n.Cores) && (n.MemoryMB == 0 || memMB <= n.MemoryMB)
	}
	if want != "" {
		n, err := srv.st.Node(ctx, want)
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) {
			return n, errorf(http.StatusNotFound, "no node %q; list nodes with `kohakuriver node list`", want)
		}
		if err != nil {
			return n, err
		}
		if n.Status != store.NodeOnline {
			return n, errorf(http.StatusServiceUnavailable, "node %s is offline (last heartbeat %s); start its agent or choose another node",
				n.Name, n.LastHeartbeat.Format(time.RFC3339))
		}
		if !fits(n) {
			return n, errorf(http.StatusBadRequest, "node %s has %d cores and %d MB of memory; ask for less", n.Name, n.Cores, n.MemoryMB)
		}
		return n, nil
	}
	nodes, err := srv.st.ListNodes(ctx)
	if err != nil {
		return store.Node{}, err
	}
	counts, err := srv.vpsCounts(ctx)
	if err != nil {
		return store.Node{}, err
	}
	var best *store.Node
	online := 0
	for i, n := range nodes {
		if n.Status != store.NodeOnline {
			continue
		}
		online++
		if fits(n) && (best == nil || counts[n.Name] < counts[best.Name]) {
			best = &nodes[i]
		}
	}
	switch {
	case online == 0:
		return store.Node{}, errorf(http.StatusServiceUnavailable, "no online node; start an agent with `kohakuriver agent`")
	case best == nil:
		return store.Node{}, errorf(http.StatusBadRequest, "no online node has %d cores and %d MB of memory; ask for less", cores, memMB)
	}
	return *best, nil
}

// vpsCounts returns the number of VPS records per node.
func (srv *Server) vpsCounts(ctx context.Context) (map[string]int, error) {
	all, err := srv.st.ListVPS(ctx)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, v := range all {
		counts[v.Node]++
	}
	return counts, nil
}

// lookupVPS finds the VPS ref (task id or name) that u may act on. Another
// user's VPS is answered exactly like a missing one, so its existence does
// not leak.
func (srv *Server) lookupVPS(ctx context.Context, u store.User, ref string) (store.VPS, error) {
	notFound := errorf(http.StatusNotFound, "no VPS %q; list yours with `kohakuriver vps list`", ref)
	if ref == "" || len(ref) > 64 {
		return store.VPS{}, notFound
	}
	v, err := srv.st.VPS(ctx, ref)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) {
		return store.VPS{}, notFound
	}
	if err != nil {
		return store.VPS{}, err
	}
	if !u.Admin && v.Owner != u.Name {
		return store.VPS{}, notFound
	}
	return v, nil
}

// onlineNode returns the VPS's node if its agent is online, else 503.
func (srv *Server) onlineNode(ctx context.Context, v store.VPS) (store.Node, error) {
	n, err := srv.st.Node(ctx, v.Node)
	if errors.Is(err, store.ErrNotFound) {
		return n, errorf(http.StatusServiceUnavailable, "node %s of VPS %s is not registered; start its agent with `kohakuriver agent`", v.Node, v.Ref())
	}
	if err != nil {
		return n, err
	}
	if n.Status != store.NodeOnline {
		return n, errorf(http.StatusServiceUnavailable, "node %s of VPS %s is offline (last heartbeat %s); start its agent or wait for it to reconnect",
			n.Name, v.Ref(), n.LastHeartbeat.Format(time.RFC3339))
	}
	return n, nil
}

func busy(v store.VPS) error {
	return errorf(http.StatusConflict, "VPS %s is busy (%s); wait until that finishes (see `kohakuriver vps status %s`)", v.Ref(), orDefault(v.Message, "creating"), v.Ref())
}

// GET /api/v1/vps: the caller's VPSs; an admin's lists every VPS.
func (srv *Server) listVPS(w http.ResponseWriter, r *http.Request) error {
	u := userFrom(r.Context())
	all, err := srv.st.ListVPS(r.Context())
	if err != nil {
		return err
	}
	out := make([]store.VPS, 0, len(all))
	for _, v := range all {
		if u.Admin || v.Owner == u.Name {
			out = append(out, v)
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// GET /api/v1/vps/{ref}
func (srv *Server) getVPS(w http.ResponseWriter, r *http.Request) error {
	v, err := srv.lookupVPS(r.Context(), userFrom(r.Context()), r.PathValue("ref"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// POST /api/v1/vps/{ref}/stop
func (srv *Server) stopVPS(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	v, err := srv.lookupVPS(ctx, userFrom(ctx), r.PathValue("ref"))
	if err != nil {
		return err
	}
	node, err := srv.onlineNode(ctx, v)
	if err != nil {
		return err
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lifecycleTimeout)
	defer cancel()
	// Claim the record as start and restart do, so that a concurrent
	// start, restart or stop is refused instead of finishing in an order
	// that leaves the record and the container disagreeing.
	var prevStatus store.VPSStatus
	var prevMessage string
	v, err = srv.st.UpdateVPS(opCtx, v.TaskID, func(x *store.VPS) error {
		switch x.Status {
		case store.StatusStopped:
			return errorf(http.StatusConflict, "VPS %s is already stopped", x.Ref())
		case store.StatusPending:
			return busy(*x)
		}
		prevStatus, prevMessage = x.Status, x.Message
		x.Status, x.Message = store.StatusPending, "stopping"
		return nil
	})
	if err != nil {
		return err
	}
	if err := srv.agents.StopVPS(opCtx, node, v.TaskID); err != nil {
		// The container was not stopped (or we cannot tell): give the
		// record back its state.
		if _, uerr := srv.st.UpdateVPS(opCtx, v.TaskID, func(x *store.VPS) error {
			if x.Status != store.StatusPending || x.Message != "stopping" {
				return errNoChange
			}
			x.Status, x.Message = prevStatus, prevMessage
			return nil
		}); uerr != nil && !errors.Is(uerr, errNoChange) {
			info(r).log.Error("cannot restore the VPS after a failed stop", "vps", v.TaskID, "err", uerr)
		}
		return nodeError(node.Name, "stop the VPS", err, "retry in a moment")
	}
	v, err = srv.st.UpdateVPS(opCtx, v.TaskID, func(x *store.VPS) error {
		x.Status, x.Message = store.StatusStopped, ""
		return nil
	})
	if err != nil {
		return err
	}
	info(r).log.Info("vps stopped", "vps", v.TaskID, "node", node.Name)
	writeJSON(w, http.StatusOK, v)
	return nil
}

// POST /api/v1/vps/{ref}/start
func (srv *Server) startVPS(w http.ResponseWriter, r *http.Request) error {
	return srv.bringUp(w, r, false)
}

// POST /api/v1/vps/{ref}/restart
func (srv *Server) restartVPS(w http.ResponseWriter, r *http.Request) error {
	return srv.bringUp(w, r, true)
}

// bringUp starts or restarts a VPS. The record is pending while the node
// works, which also refuses a concurrent start, restart or stop (409).
// Failure leaves it failed with the node's message.
func (srv *Server) bringUp(w http.ResponseWriter, r *http.Request, restart bool) error {
	ctx := r.Context()
	verb := "start"
	if restart {
		verb = "restart"
	}
	v, err := srv.lookupVPS(ctx, userFrom(ctx), r.PathValue("ref"))
	if err != nil {
		return err
	}
	node, err := srv.onlineNode(ctx, v)
	if err != nil {
		return err
	}
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lifecycleTimeout)
	defer cancel()
	v, err = srv.st.UpdateVPS(opCtx, v.TaskID, func(x *store.VPS) error {
		switch {
		case x.Status == store.StatusPending:
			return busy(*x)
		case x.Status == store.StatusRunning && !restart:
			return errorf(http.StatusConflict, "VPS %s is already running; use restart to restart it", x.Ref())
		}
		x.Status, x.Message = store.StatusPending, verb+"ing"
		return nil
	})
	if err != nil {
		return err
	}
	var st VPSState
	if restart {
		st, err = srv.agents.RestartVPS(opCtx, node, v.TaskID)
	} else {
		st, err = srv.agents.StartVPS(opCtx, node, v.TaskID)
	}
	if err == nil && !st.Running {
		err = errors.New(orDefault(st.Message, "the container is not running afterwards"))
	}
	log := info(r).log.With("vps", v.TaskID, "node", node.Name)
	if err != nil {
		he := nodeError(node.Name, verb+" the VPS", err, "")
		if _, uerr := srv.st.UpdateVPS(opCtx, v.TaskID, func(x *store.VPS) error {
			x.Status, x.Message = store.StatusFailed, he.msg
			return nil
		}); uerr != nil {
			log.Error("cannot record failed "+verb, "err", uerr)
		}
		log.Warn("vps "+verb+" failed", "err", err)
		he.msg += "; retry, or delete and recreate the VPS"
		return he
	}
	v, err = srv.st.UpdateVPS(opCtx, v.TaskID, func(x *store.VPS) error {
		applyRunning(x, st)
		return nil
	})
	if err != nil {
		return err
	}
	// Keys may have changed while the VPS was down (pushKeys skips VPSs
	// that are not running). Best effort: gateway logins use the store.
	if kerr := srv.agents.SetKeys(opCtx, node, v.TaskID, v.LoginUser, srv.authorizedKeys(v)); kerr != nil {
		log.Warn("cannot refresh authorized_keys after "+verb, "err", kerr)
	}
	if v.Message == hostKeyChangedMsg {
		log.Warn("vps host key changed; keeping the pinned key", "reported", strings.Join(st.HostKeys, ", "))
	}
	log.Info("vps " + verb + "ed")
	writeJSON(w, http.StatusOK, v)
	return nil
}

// applyRunning records that the node reports x running with st. Host keys
// are pinned if none are yet; reported keys that differ from the pinned
// ones never replace them (that is what pinning is for): the Message says
// so, and the gateway refuses the hop.
func applyRunning(x *store.VPS, st VPSState) {
	x.Status, x.Message = store.StatusRunning, ""
	switch {
	case len(st.HostKeys) == 0:
	case len(x.HostKeys) == 0:
		x.HostKeys = slices.Clone(st.HostKeys)
	case !hostKeysPinned(x.HostKeys, st.HostKeys):
		x.Message = hostKeyChangedMsg
	}
}

// hostKeysPinned reports whether every reported key is one of the pinned
// keys, comparing type and key data (comments may differ).
func hostKeysPinned(pinned, reported []string) bool {
	norm := func(line string) string {
		f := strings.Fields(line)
		if len(f) < 2 {
			return line
		}
		return f[0] + " " + f[1]
	}
	set := map[string]bool{}
	for _, p := range pinned {
		set[norm(p)] = true
	}
	for _, k := range reported {
		if !set[norm(k)] {
			return false
		}
	}
	return true
}

// DELETE /api/v1/vps/{ref}[?force=1]
//
// The node removes the container first, then the record goes. When the
// node is offline (or fails), the record stays unless force is given:
// force deletes the record only, and the container stays on the node.
func (srv *Server) deleteVPS(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	v, err := srv.lookupVPS(ctx, userFrom(ctx), r.PathValue("ref"))
	if err != nil {
		return err
	}
	force := r.URL.Query().Get("force") == "1" || r.URL.Query().Get("force") == "true"
	log := info(r).log.With("vps", v.TaskID, "node", v.Node)
	node, err := srv.st.Node(ctx, v.Node)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if err == nil && node.Status == store.NodeOnline {
		opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lifecycleTimeout)
		defer cancel()
		if derr := srv.agents.DeleteVPS(opCtx, node, v.TaskID); derr != nil {
			if !force {
				return nodeError(node.Name, "remove the container", derr,
					"retry, or delete only the record with --force (?force=1; the container then stays on the node)")
			}
			log.Warn("node failed to remove the container; deleting the record anyway (force)", "err", derr)
		}
	} else if !force {
		return errorf(http.StatusConflict, "node %s is offline, so the container of VPS %s cannot be removed; retry when it is back, "+
			"or delete only the record with --force (?force=1; the container then stays on the node)", v.Node, v.Ref())
	}
	if err := srv.st.DeleteVPS(ctx, v.TaskID); errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, "no VPS %q; it was deleted meanwhile", v.Ref())
	} else if err != nil {
		return err
	}
	log.Info("vps deleted", "force", force)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// orDefault returns msg, or def when msg is empty.
func orDefault(msg, def string) string {
	if msg != "" {
		return msg
	}
	return def
}
