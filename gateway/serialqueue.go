package gateway

import "sync"

// serialQueue runs functions one at a time, in the order they were pushed,
// on a goroutine that exists only while some are waiting. The relay sends
// what a peer must see in order (requests, EOF, CLOSE) through one, so that
// waiting for a reply blocks neither the goroutine that decides what to
// send nor anything else, and costs no goroutine while nothing is sent:
// most channels and connections sit idle for most of their life.
type serialQueue struct {
	mu      sync.Mutex
	queue   []func() // pushed, not started
	running bool     // a goroutine runs queue
	waiting int      // pushed, not finished
	// wake gets a token (if it has none) each time a function has
	// finished: a caller that stopped pushing while pending was high
	// selects on it to look again. It may be shared with other signals.
	wake chan<- struct{}
}

// newSerialQueue makes a queue that signals wake (a channel with a buffer
// of one) after each function.
func newSerialQueue(wake chan<- struct{}) *serialQueue { return &serialQueue{wake: wake} }

// push queues f, starting the goroutine if none runs.
func (q *serialQueue) push(f func()) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.queue = append(q.queue, f)
	q.waiting++
	if !q.running {
		q.running = true
		go q.run()
	}
}

// pending is how many pushed functions have not finished.
func (q *serialQueue) pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waiting
}

func (q *serialQueue) run() {
	q.mu.Lock()
	for len(q.queue) > 0 {
		f := q.queue[0]
		q.queue[0] = nil
		q.queue = q.queue[1:]
		q.mu.Unlock()
		f()
		q.mu.Lock()
		q.waiting--
		signal(q.wake)
	}
	q.running = false
	q.queue = nil // let a burst's backing array go
	q.mu.Unlock()
}

// signal leaves a token on wake, unless one is there already.
func signal(wake chan<- struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}

// maxQueuedRequests is how many requests a relay loop lets wait in a
// serialQueue before it stops taking more from their source (x/crypto's
// own queues of incoming requests have the same size, so the peer meets the
// back-pressure it would meet with a reader that blocked).
const maxQueuedRequests = 16

// takeIfRoom is src while fewer than maxQueuedRequests functions are
// pending in q, else nil: a select case that cannot fire. A loop that
// selects on it also selects on q's wake channel, to look again once one
// finished.
func takeIfRoom[T any](q *serialQueue, src <-chan T) <-chan T {
	if q.pending() >= maxQueuedRequests {
		return nil
	}
	return src
}
