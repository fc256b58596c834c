package embedded

import (
	"context"
	"log/slog"
	"sync"

	"github.com/kohakuriver/kohakuriver/store"
)

// watchBuffer is how many events a watcher may have unread before it loses
// events and gets an EventResync. Its channel has one more slot, reserved
// for that EventResync.
const watchBuffer = 256

// hub fans committed events out to watchers. publish runs in bbolt commit
// handlers (see DB.wmu) and must never block.
//
// Every send on and close of a watcher channel happens under mu, so publish
// never sends on a closed channel and knows what it last queued. The
// resync rule relies on that: the channel holds the last len(ch) queued
// events, so if the last event queued was an EventResync and len(ch) > 0,
// that EventResync is still unread, and the consumer will re-read the state
// after receiving it, which covers every event dropped until then.
type hub struct {
	log *slog.Logger

	mu       sync.Mutex
	closed   bool                  // set once by close
	watchers map[*watcher]struct{} // live watchers

	wg sync.WaitGroup // one count per registered context.AfterFunc
}

// watcher is one Watch call.
type watcher struct {
	ch   chan store.Event // capacity watchBuffer+1
	stop func() bool      // stops the AfterFunc that ends the watcher with ctx

	lastResync bool // guarded by hub.mu: the last event queued was EventResync
}

func newHub(log *slog.Logger) *hub {
	return &hub{log: log, watchers: make(map[*watcher]struct{})}
}

// watch registers a watcher that lives until ctx is done or the hub closes.
// It starts no goroutine until ctx is done.
func (h *hub) watch(ctx context.Context) <-chan store.Event {
	w := &watcher{ch: make(chan store.Event, watchBuffer+1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(w.ch)
		return w.ch
	}
	h.watchers[w] = struct{}{}
	h.wg.Add(1)
	w.stop = context.AfterFunc(ctx, func() {
		defer h.wg.Done()
		h.mu.Lock()
		defer h.mu.Unlock()
		h.remove(w)
	})
	return w.ch
}

// remove closes w's channel unless close already did. Callers hold mu.
func (h *hub) remove(w *watcher) {
	if _, ok := h.watchers[w]; ok {
		delete(h.watchers, w)
		close(w.ch)
	}
}

// publish hands ev to every watcher without blocking. A watcher with
// watchBuffer unread events loses ev; unless an unread EventResync is
// already queued after those events, one goes into the reserved slot.
// Events that come once there is room again are queued after it: the
// consumer may see them twice (once in its re-read), never miss them.
func (h *hub) publish(ev store.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for w := range h.watchers {
		if len(w.ch) < watchBuffer {
			w.ch <- cloneEvent(ev) // cannot block: only we send, under mu
			w.lastResync = false
			continue
		}
		if w.lastResync {
			continue // the queued EventResync is unread and covers ev
		}
		// len(w.ch) == watchBuffer: regular events never fill the
		// reserved slot, and a full channel ends in an EventResync.
		w.ch <- store.Event{Kind: store.EventResync}
		w.lastResync = true
		h.log.Info("watcher fell behind, dropping events until it reads", "buffer", watchBuffer)
	}
}

// close closes every watcher channel and waits for the context.AfterFunc
// callbacks that already started. Events published later are discarded.
func (h *hub) close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	for w := range h.watchers {
		if w.stop() {
			h.wg.Done() // its callback will never run
		}
		h.remove(w)
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// cloneEvent gives each watcher its own copy of the VPS's slices.
func cloneEvent(ev store.Event) store.Event {
	ev.VPS = cloneVPS(ev.VPS)
	return ev
}
