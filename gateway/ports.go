package gateway

import (
	"net"
	"strconv"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

// portListener is the gateway's listener on one VPS's SSH port.
type portListener struct {
	port int
	ln   net.Listener
}

// wantsPortListener reports whether a VPS's port should be open: from
// creation until it is stopped or deleted. A pending, lost or failed VPS
// keeps its listener so users get a message rather than "connection refused".
func wantsPortListener(v store.VPS) bool {
	return v.SSHPort > 0 && v.Status != store.StatusStopped
}

// startPortReconciler opens the listeners of the current VPSs and keeps them
// in step with the directory: every committed change pokes a full
// reconciliation, which also repairs anything a dropped event missed.
func (s *Server) startPortReconciler() error {
	events := s.cfg.Directory.Watch(s.ctx)
	if err := s.reconcilePorts(); err != nil {
		return err
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		// A periodic pass retries ports that failed to bind (in use by
		// something else for a moment, say).
		retry := time.NewTicker(30 * time.Second)
		defer retry.Stop()
		for {
			select {
			case <-s.ctx.Done():
				return
			case _, ok := <-events:
				if !ok {
					return
				}
				// Coalesce bursts (a create is several events).
				drain(events)
			case <-retry.C:
			}
			if err := s.reconcilePorts(); err != nil {
				s.log.Warn("port listeners not reconciled", "err", err)
			}
		}
	}()
	return nil
}

func drain(ch <-chan store.Event) {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// reconcilePorts opens the missing port listeners and closes the unwanted.
func (s *Server) reconcilePorts() error {
	vpss, err := s.cfg.Directory.ListVPS(s.ctx)
	if err != nil {
		return err
	}
	want := make(map[int]bool, len(vpss))
	for _, v := range vpss {
		if wantsPortListener(v) {
			want[v.SSHPort] = true
		}
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	var stale []*portListener
	for port, pl := range s.ports {
		if !want[port] {
			stale = append(stale, pl)
			delete(s.ports, port)
		}
	}
	var missing []int
	for port := range want {
		if _, ok := s.ports[port]; !ok {
			missing = append(missing, port)
		}
	}
	s.mu.Unlock()

	for _, pl := range stale {
		pl.ln.Close()
		s.log.Info("vps port closed", "port", pl.port)
	}
	for _, port := range missing {
		addr := net.JoinHostPort(s.cfg.PortHost, strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			s.log.Warn("vps port not opened", "port", port, "err", err)
			continue
		}
		s.mu.Lock()
		if s.closed || s.ports[port] != nil {
			s.mu.Unlock()
			ln.Close()
			continue
		}
		s.ports[port] = &portListener{port: port, ln: ln}
		s.mu.Unlock()
		s.serve(ln, listenerInfo{vpsPort: port})
		s.log.Info("vps port opened", "port", port)
	}
	return nil
}

// PortListening reports whether the gateway listens on a VPS port.
func (s *Server) PortListening(port int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ports[port]
	return ok
}
