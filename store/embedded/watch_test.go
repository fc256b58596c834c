package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

// next receives one event or fails after a generous timeout.
func next(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	panic("unreachable")
}

// expectClosed waits for ch to be closed, discarding events.
func expectClosed(t *testing.T, ch <-chan store.Event) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("watch channel not closed within 5s")
		}
	}
}

func TestWatchEvents(t *testing.T) {
	db := openTestDB(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := db.Watch(ctx)
	bg := context.Background()

	v := mustCreate(t, db, newVPS("web", 1))
	// Refused writes commit nothing and so publish nothing.
	if _, err := db.UpdateVPS(bg, v.TaskID, func(*store.VPS) error { return errors.New("no") }); err == nil {
		t.Fatal("UpdateVPS with failing fn succeeded")
	}
	if _, err := db.CreateVPS(bg, newVPS("web")); !errors.Is(err, store.ErrNameTaken) {
		t.Fatalf("duplicate create: %v", err)
	}
	upd, err := db.UpdateVPS(bg, v.TaskID, func(v *store.VPS) error { v.Status = store.StatusRunning; return nil })
	if err != nil {
		t.Fatal(err)
	}
	// A no-op update publishes nothing either.
	if _, err := db.UpdateVPS(bg, v.TaskID, func(*store.VPS) error { return nil }); err != nil {
		t.Fatal(err)
	}
	n, err := db.UpsertNode(bg, "node1", func(n *store.Node) error { n.Status = store.NodeOnline; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteNode(bg, "node1"); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteVPS(bg, v.TaskID); err != nil {
		t.Fatal(err)
	}

	want := []struct {
		name string
		kind store.EventKind
		vps  store.VPS
		node store.Node
	}{
		{"create", store.EventVPSPut, v, store.Node{}},
		{"update", store.EventVPSPut, upd, store.Node{}},
		{"node put", store.EventNodePut, store.VPS{}, n},
		{"node deleted", store.EventNodeDeleted, store.VPS{}, n},
		{"vps deleted", store.EventVPSDeleted, upd, store.Node{}},
	}
	for _, w := range want {
		ev := next(t, ch)
		if ev.Kind != w.kind || ev.VPS.TaskID != w.vps.TaskID || ev.VPS.Status != w.vps.Status || ev.Node != w.node {
			t.Errorf("%s: got %+v", w.name, ev)
		}
	}
	select {
	case ev := <-ch:
		t.Errorf("unexpected event %+v", ev)
	default:
	}
	cancel()
	expectClosed(t, ch)
}

func TestWatchSlowWatcherGetsResync(t *testing.T) {
	db := openTestDB(t, nil)
	db.bdb.NoSync = true // many small writes; durability is not under test
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slow := db.Watch(ctx) // not read until the writes are done

	const writes = watchBuffer + 50
	done := make(chan error, 1)
	go func() {
		for i := range writes {
			_, err := db.UpsertNode(context.Background(), fmt.Sprintf("n%d", i), func(*store.Node) error { return nil })
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writers blocked behind a slow watcher")
	}

	// The slow watcher has its buffer of the first events, then one resync.
	for i := range watchBuffer {
		if ev := next(t, slow); ev.Kind != store.EventNodePut || ev.Node.Name != fmt.Sprintf("n%d", i) {
			t.Fatalf("slow watcher event %d: %+v", i, ev)
		}
	}
	if ev := next(t, slow); ev.Kind != store.EventResync {
		t.Fatalf("after the buffer: %+v, want EventResync", ev)
	}
	select {
	case ev := <-slow:
		t.Fatalf("after the resync: %+v, want nothing", ev)
	default:
	}
	// Events flow normally again afterwards.
	if _, err := db.UpsertNode(context.Background(), "after", func(*store.Node) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, slow); ev.Kind != store.EventNodePut || ev.Node.Name != "after" {
		t.Errorf("after resync: %+v", ev)
	}
}

// TestHubResyncRule drives the hub directly through overflows while the
// consumer reads in between, and checks the exact sequence it receives.
func TestHubResyncRule(t *testing.T) {
	h := newHub(slog.New(slog.DiscardHandler))
	defer h.close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := h.watch(ctx)
	seq := 0
	publish := func(n int) {
		for range n {
			h.publish(store.Event{Kind: store.EventNodePut, Node: store.Node{Name: fmt.Sprint(seq)}})
			seq++
		}
	}
	var got []string
	read := func(n int) {
		for range n {
			ev := next(t, ch)
			if ev.Kind == store.EventResync {
				got = append(got, "R")
			} else {
				got = append(got, ev.Node.Name)
			}
		}
	}
	publish(watchBuffer) // 0..255 fill the buffer
	publish(3)           // 256..258 dropped, one resync queued
	read(10)             // 0..9
	publish(10)          // 259..267 queued after the resync, 268 overflows again
	read(watchBuffer - 10 + 1 + 9 + 1)

	var want []string
	for i := 0; i < watchBuffer; i++ {
		want = append(want, fmt.Sprint(i))
	}
	want = append(want, "R")
	// 259.. fill the 9 free regular slots (len was 247 with the resync);
	// the next one overflows and queues a second resync.
	for i := 259; i < 259+9; i++ {
		want = append(want, fmt.Sprint(i))
	}
	want = append(want, "R")
	if !slices.Equal(got, want) {
		t.Errorf("received\n%v\nwant\n%v", got, want)
	}
	select {
	case ev := <-ch:
		t.Errorf("extra event %+v", ev)
	default:
	}
}

func TestWatchEventsAreCopies(t *testing.T) {
	db := openTestDB(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := db.Watch(ctx), db.Watch(ctx)
	mustCreate(t, db, newVPS("web", 1))
	evA, evB := next(t, a), next(t, b)
	evA.VPS.Keys[0].Line = "changed"
	if evB.VPS.Keys[0].Line == "changed" {
		t.Error("watchers share the event's Keys")
	}
}

func TestWatchClosed(t *testing.T) {
	tests := []struct {
		name string
		end  func(cancel context.CancelFunc, db *DB)
	}{
		{"context canceled", func(cancel context.CancelFunc, _ *DB) { cancel() }},
		{"db closed", func(_ context.CancelFunc, db *DB) { db.Close() }},
		{"db closed with pending resync", func(_ context.CancelFunc, db *DB) {
			db.bdb.NoSync = true
			for i := range watchBuffer + 1 {
				_, _ = db.UpsertNode(context.Background(), fmt.Sprintf("n%d", i), func(*store.Node) error { return nil })
			}
			db.Close()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTestDB(t, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch := db.Watch(ctx)
			tt.end(cancel, db)
			expectClosed(t, ch)
		})
	}
	t.Run("context already done", func(t *testing.T) {
		db := openTestDB(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		expectClosed(t, db.Watch(ctx))
	})
}
