package gateway

import (
	"testing"
	"time"
)

// TestSerialQueue: functions run one at a time in push order, pending
// counts what has not finished, wake gets a token as each finishes, and the
// goroutine is gone once the queue is empty, started again by the next push.
func TestSerialQueue(t *testing.T) {
	wake := make(chan struct{}, 1)
	q := newSerialQueue(wake)
	release := make(chan struct{})
	var order []int
	ran := make(chan int, 10)
	q.push(func() { <-release; order = append(order, 0); ran <- 0 })
	for i := 1; i < 5; i++ {
		q.push(func() { order = append(order, i); ran <- i })
	}
	if n := q.pending(); n != 5 {
		t.Fatalf("pending = %d with five pushed and the first blocked, want 5", n)
	}
	close(release)
	for range 5 {
		within(t, "a function to run", func() int { return <-ran })
	}
	for i, v := range order {
		if v != i {
			t.Fatalf("ran in order %v", order)
		}
	}
	within(t, "a wake token", func() struct{} { <-wake; return struct{}{} })
	waitIdle(t, q)
	if n := q.pending(); n != 0 {
		t.Fatalf("pending = %d after all ran", n)
	}
	q.push(func() { ran <- 5 })
	if got := within(t, "a push after the queue went idle", func() int { return <-ran }); got != 5 {
		t.Fatalf("ran %d", got)
	}
	waitIdle(t, q)
}

// waitIdle waits for q's goroutine to end.
func waitIdle(t *testing.T, q *serialQueue) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		q.mu.Lock()
		running := q.running
		q.mu.Unlock()
		if !running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the queue's goroutine still runs with nothing queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
