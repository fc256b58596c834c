package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/relay"
	"github.com/kohakuriver/kohakuriver/store"
)

// maxReportVPS bounds the VPS states in one agent report.
const maxReportVPS = 10000

// maxBootID bounds a reported boot id (Linux's is a 36-character UUID).
const maxBootID = 64

// errNoChange is returned by Update/Upsert functions to write nothing.
var errNoChange = errors.New("no change")

// GET /api/v1/nodes (every user: node names and capacity are not secret)
func (srv *Server) listNodes(w http.ResponseWriter, r *http.Request) error {
	nodes, err := srv.st.ListNodes(r.Context())
	if err != nil {
		return err
	}
	counts, err := srv.vpsCounts(r.Context())
	if err != nil {
		return err
	}
	out := make([]NodeInfo, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, NodeInfo{Node: n, VPSCount: counts[n.Name]})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// GET /api/v1/nodes/{name}
func (srv *Server) getNode(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	n, err := srv.st.Node(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) {
		return errorf(http.StatusNotFound, "no node %q; list nodes with `kohakuriver node list`", name)
	}
	if err != nil {
		return err
	}
	counts, err := srv.vpsCounts(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, NodeInfo{Node: n, VPSCount: counts[n.Name]})
	return nil
}

// POST /api/v1/agent/register (cluster token): creates or updates the node,
// online, and reconciles its VPSs with the report.
func (srv *Server) register(w http.ResponseWriter, r *http.Request) error {
	return srv.report(w, r, true)
}

// POST /api/v1/agent/heartbeat (cluster token): like register, for a node
// the host knows; an unknown node gets 404 and registers again.
func (srv *Server) heartbeat(w http.ResponseWriter, r *http.Request) error {
	return srv.report(w, r, false)
}

func (srv *Server) report(w http.ResponseWriter, r *http.Request, register bool) error {
	ctx := r.Context()
	rep, err := decodeReport(r)
	if err != nil {
		return err
	}
	log := info(r).log.With("node", rep.Name)
	now := srv.now().UTC()
	wasOnline := false
	n, err := srv.st.UpsertNode(ctx, rep.Name, func(n *store.Node) error {
		if !register && n.RegisteredAt.IsZero() {
			return errorf(http.StatusNotFound, "node %s is not registered; register first", rep.Name)
		}
		wasOnline = n.Status == store.NodeOnline
		if wasOnline && n.Address != rep.Address && now.Sub(n.LastHeartbeat) < srv.hbTimeout {
			// Two agents with one name (a cloned machine keeps its
			// hostname, the default name): the second must not take the
			// first one's VPSs over, or fail them as missing.
			return errorf(http.StatusConflict, "node %s is online at %s (last report %s ago) and this agent reports %s: give each agent its own --name; if the node moved, retry after %s",
				rep.Name, n.Address, now.Sub(n.LastHeartbeat).Round(time.Second), rep.Address, srv.hbTimeout)
		}
		n.Address, n.Cores, n.MemoryMB = rep.Address, rep.Cores, rep.MemoryMB
		n.RelaySocket, n.BootID = rep.RelaySocket, rep.BootID
		n.Status, n.LastHeartbeat = store.NodeOnline, now
		if register {
			n.RegisteredAt = now
		}
		return nil
	})
	if errors.Is(err, store.ErrInvalid) {
		return invalid(err, "")
	}
	if err != nil {
		return err
	}
	switch {
	case register:
		log.Info("node registered", "address", n.Address, "cores", n.Cores, "memory_mb", n.MemoryMB, "vps", len(rep.VPS))
	case !wasOnline:
		log.Info("node back online", "address", n.Address)
	}
	srv.reconcile(ctx, log, rep)
	writeJSON(w, http.StatusOK, n)
	return nil
}

// decodeReport reads an agent report. Unknown fields are allowed here,
// unlike in user requests, so a newer agent can talk to an older host;
// the body was already bounded and verified by clusterauth.
func decodeReport(r *http.Request) (AgentReport, error) {
	var rep AgentReport
	if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
		return rep, decodeError(err)
	}
	switch {
	case rep.Name == "":
		return rep, errorf(http.StatusBadRequest, "name is required: the node's name")
	case rep.Cores < 0 || rep.MemoryMB < 0:
		return rep, errorf(http.StatusBadRequest, "cores and memory_mb cannot be negative")
	case len(rep.VPS) > maxReportVPS:
		return rep, errorf(http.StatusBadRequest, "a report holds at most %d VPSs", maxReportVPS)
	}
	if host, port, err := net.SplitHostPort(rep.Address); err != nil || host == "" || port == "" {
		return rep, errorf(http.StatusBadRequest, "address %q must be host:port, where the host reaches the agent", rep.Address)
	}
	if (rep.RelaySocket == "") != (rep.BootID == "") {
		return rep, errorf(http.StatusBadRequest, "relay_socket and boot_id come together: the socket means something only on the machine of that boot id")
	}
	if rep.RelaySocket != "" {
		if err := relay.CheckSocketPath(rep.RelaySocket); err != nil {
			return rep, errorf(http.StatusBadRequest, "%v", err)
		}
		if len(rep.BootID) > maxBootID || strings.ContainsFunc(rep.BootID, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
			return rep, errorf(http.StatusBadRequest, "boot_id must be at most %d printable characters (the kernel's random boot id)", maxBootID)
		}
	}
	return rep, nil
}

// reconcile updates the node's VPS records from what it reports:
//
//   - lost and reported running: running (host keys checked as on start);
//   - lost and reported not running: stopped;
//   - lost and not reported: stays lost, with a message saying the
//     container is gone;
//   - pending and reported running: running (the report may beat the
//     create or start call's answer, which then sets the same state);
//   - pending since before this host started: see reconcileVPS;
//   - failed as missing from the reports and reported running: running.
//
// Other records are left alone: the API's own calls set them, and a report
// made before such a call must not undo it. Reported task ids the host does
// not know, or knows on another node, are logged and ignored.
func (srv *Server) reconcile(ctx context.Context, log *slog.Logger, rep AgentReport) {
	reported := make(map[string]VPSState, len(rep.VPS))
	for _, s := range rep.VPS {
		reported[s.TaskID] = s
	}
	all, err := srv.st.ListVPS(ctx)
	if err != nil {
		log.Error("reconcile: list vps", "err", err)
		return
	}
	for _, v := range all {
		st, ok := reported[v.TaskID]
		delete(reported, v.TaskID)
		if v.Node != rep.Name {
			if ok {
				log.Warn("node reports a VPS placed on another node; ignored", "vps", v.TaskID, "vps_node", v.Node)
			}
			continue
		}
		if v.Status == store.StatusRunning && !ok && srv.now().Sub(v.UpdatedAt) > max(2*srv.hbTimeout, time.Minute) {
			// The container is gone (removed by hand, or never finished);
			// the age guard keeps a report listed just before a create
			// from failing the new VPS.
			_, err := srv.st.UpdateVPS(ctx, v.TaskID, func(x *store.VPS) error {
				if x.Status != store.StatusRunning {
					return errNoChange
				}
				x.Status = store.StatusFailed
				x.Message = missingContainerMsg(rep.Name)
				return nil
			})
			if err == nil {
				log.Warn("running VPS missing from its node's report", "vps", v.TaskID)
			}
			continue
		}
		if v.Status != store.StatusLost && v.Status != store.StatusPending && v.Status != store.StatusFailed {
			continue
		}
		_, err := srv.st.UpdateVPS(ctx, v.TaskID, func(x *store.VPS) error {
			return reconcileVPS(x, st, ok, rep.Name, srv.started, srv.now())
		})
		switch {
		case errors.Is(err, errNoChange), errors.Is(err, store.ErrNotFound):
		case err != nil:
			log.Error("reconcile vps", "vps", v.TaskID, "err", err)
		default:
			log.Info("vps reconciled from node report", "vps", v.TaskID, "was", v.Status, "running", st.Running)
		}
	}
	for id := range reported {
		log.Info("node reports a VPS the host does not know; ignored", "vps", id)
	}
}

// missingContainerMsg is the Message of a running VPS that its node's
// reports stopped listing; the VPS comes back if its container does.
func missingContainerMsg(node string) string {
	return fmt.Sprintf("node %s no longer has this VPS's container; delete the VPS and create it again", node)
}

// reconcileVPS applies one report entry (reported says whether there was
// one) to x, or returns errNoChange. It rechecks x's status: the record may
// have changed since it was listed. A VPS pending since before this host
// started (hostStart) was cut off by a host restart mid-create or
// mid-start, so nothing will finish it: with no container on its node it
// fails, and with a container that is still not running createTimeout
// after the record last changed it is stopped, so its owner can start it.
// A VPS failed as missing from its node's reports comes back when its
// container is reported running again.
func reconcileVPS(x *store.VPS, st VPSState, reported bool, node string, hostStart, now time.Time) error {
	cutOff := x.Status == store.StatusPending && x.UpdatedAt.Before(hostStart)
	switch {
	case cutOff && !reported:
		x.Status = store.StatusFailed
		x.Message = fmt.Sprintf("the host restarted before node %s created this VPS; delete it and create it again", node)
	case x.Status == store.StatusLost && reported && st.Running,
		x.Status == store.StatusPending && reported && st.Running,
		x.Status == store.StatusFailed && x.Message == missingContainerMsg(node) && reported && st.Running:
		applyRunning(x, st)
	case cutOff && now.Sub(x.UpdatedAt) > createTimeout:
		x.Status = store.StatusStopped
		x.Message = fmt.Sprintf("the host restarted while this VPS was being created or started, and its container is not running; start it with `kohakuriver vps start %s`", x.Ref())
	case x.Status == store.StatusLost && reported:
		x.Status = store.StatusStopped
		x.Message = fmt.Sprintf("the container was not running when node %s came back; start it with `kohakuriver vps start %s`", node, x.Ref())
	case x.Status == store.StatusLost:
		msg := fmt.Sprintf("node %s is back but no longer has this VPS's container; delete the VPS", node)
		if x.Message == msg {
			return errNoChange
		}
		x.Message = msg
	default:
		return errNoChange
	}
	return nil
}

// RunNodeMonitor marks nodes offline whose last heartbeat is older than
// HeartbeatTimeout, and their VPSs lost, checking every third of the
// timeout until ctx is done. A lost VPS's Message says what its status
// was; the status itself comes back from the node's next report (see
// reconcile). Call it once, in its own goroutine.
func (srv *Server) RunNodeMonitor(ctx context.Context) {
	t := time.NewTicker(max(srv.hbTimeout/3, 100*time.Millisecond))
	defer t.Stop()
	// Heartbeats missed while the host itself was down say nothing about
	// the nodes: give every node a full timeout from now before judging.
	started := srv.now()
	for {
		if srv.now().Sub(started) < srv.hbTimeout {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			continue
		}
		if err := srv.checkNodes(ctx); err != nil && ctx.Err() == nil {
			srv.log.Error("node monitor", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkNodes is one pass of the node monitor.
func (srv *Server) checkNodes(ctx context.Context) error {
	now := srv.now()
	stale := func(n *store.Node) bool { return now.Sub(n.LastHeartbeat) > srv.hbTimeout }
	nodes, err := srv.st.ListNodes(ctx)
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	offline := map[string]store.Node{}
	for _, n := range nodes {
		if n.Status == store.NodeOnline && stale(&n) {
			n, err = srv.st.UpsertNode(ctx, n.Name, func(x *store.Node) error {
				if x.Status != store.NodeOnline || !stale(x) {
					return errNoChange // a heartbeat came in meanwhile
				}
				x.Status = store.NodeOffline
				return nil
			})
			if errors.Is(err, errNoChange) {
				continue
			}
			if err != nil {
				return fmt.Errorf("mark node %s offline: %w", n.Name, err)
			}
			srv.log.Warn("node offline: no heartbeat", "node", n.Name, "last_heartbeat", n.LastHeartbeat, "timeout", srv.hbTimeout)
		}
		if n.Status == store.NodeOffline {
			offline[n.Name] = n
		}
	}
	if len(offline) == 0 {
		return nil
	}
	all, err := srv.st.ListVPS(ctx)
	if err != nil {
		return fmt.Errorf("list vps: %w", err)
	}
	for _, v := range all {
		n, ok := offline[v.Node]
		if !ok || !mayLose(v.Status) {
			continue
		}
		_, err := srv.st.UpdateVPS(ctx, v.TaskID, func(x *store.VPS) error {
			if !mayLose(x.Status) {
				return errNoChange
			}
			x.Message = fmt.Sprintf("node %s stopped sending heartbeats (last at %s); the VPS was %s and gets its state back when the node reports again",
				n.Name, n.LastHeartbeat.UTC().Format(time.RFC3339), x.Status)
			x.Status = store.StatusLost
			return nil
		})
		switch {
		case errors.Is(err, errNoChange), errors.Is(err, store.ErrNotFound):
		case err != nil:
			return fmt.Errorf("mark vps %s lost: %w", v.TaskID, err)
		default:
			srv.log.Warn("vps lost with its node", "vps", v.TaskID, "node", n.Name, "was", v.Status)
		}
	}
	return nil
}

// mayLose reports whether a VPS in status s becomes lost when its node
// goes offline. Failed VPSs stay failed: there is nothing to come back to.
func mayLose(s store.VPSStatus) bool {
	return s == store.StatusRunning || s == store.StatusPending || s == store.StatusStopped
}
