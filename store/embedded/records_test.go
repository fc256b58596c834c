package embedded

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

func TestNodes(t *testing.T) {
	db := openTestDB(t, nil)
	ctx := context.Background()
	errFn := errors.New("fn says no")
	beat := testNow.Add(time.Minute)
	tests := []struct {
		name string
		node string
		fn   func(*store.Node) error
		want error
		// check runs on the stored node after a successful upsert.
		check func(t *testing.T, n store.Node)
	}{
		{"create", "node1", func(n *store.Node) error {
			if n.Name != "node1" || !n.RegisteredAt.IsZero() {
				t.Errorf("fn got %+v for a new node", *n)
			}
			n.Address, n.Status = "10.0.0.1:7000", store.NodeOnline
			return nil
		}, nil, func(t *testing.T, n store.Node) {
			if n.Address != "10.0.0.1:7000" || !n.RegisteredAt.Equal(testNow) {
				t.Errorf("stored %+v", n)
			}
		}},
		{"heartbeat", "node1", func(n *store.Node) error {
			if n.Address != "10.0.0.1:7000" {
				t.Errorf("fn got %+v, want the stored node", *n)
			}
			n.LastHeartbeat = beat
			return nil
		}, nil, func(t *testing.T, n store.Node) {
			if !n.LastHeartbeat.Equal(beat) || !n.RegisteredAt.Equal(testNow) {
				t.Errorf("stored %+v", n)
			}
		}},
		{"second node", "node0.example", func(n *store.Node) error { return nil }, nil, nil},
		{"rename refused", "node1", func(n *store.Node) error { n.Name = "x"; return nil }, store.ErrInvalid, nil},
		{"fn error", "node1", func(n *store.Node) error { n.Address = "lost"; return errFn }, errFn, nil},
		{"empty name", "", func(n *store.Node) error { return nil }, store.ErrInvalid, nil},
		{"name with space", "a b", func(n *store.Node) error { return nil }, store.ErrInvalid, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := db.UpsertNode(ctx, tt.node, tt.fn)
			if !errors.Is(err, tt.want) {
				t.Fatalf("UpsertNode = %v, want %v", err, tt.want)
			}
			if err != nil {
				return
			}
			stored, err := db.Node(ctx, tt.node)
			if err != nil || !reflect.DeepEqual(stored, got) {
				t.Errorf("Node = %+v, %v; UpsertNode returned %+v", stored, err, got)
			}
			if tt.check != nil {
				tt.check(t, stored)
			}
		})
	}
	if n, _ := db.Node(ctx, "node1"); n.Address != "10.0.0.1:7000" {
		t.Errorf("refused upserts changed node1: %+v", n)
	}
	nodes, err := db.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	if want := []string{"node0.example", "node1"}; !slices.Equal(names, want) {
		t.Errorf("ListNodes = %v, want %v", names, want)
	}
	if err := db.DeleteNode(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"node1", ""} {
		if _, err := db.Node(ctx, name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Node(%q) = %v, want ErrNotFound", name, err)
		}
		if err := db.DeleteNode(ctx, name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("DeleteNode(%q) = %v, want ErrNotFound", name, err)
		}
	}
}

func TestUsers(t *testing.T) {
	db := openTestDB(t, nil)
	ctx := context.Background()
	tests := []struct {
		name string
		in   store.User
		want error
	}{
		{"admin", store.User{Name: "root-admin", Admin: true, TokenHash: "h-admin"}, nil},
		{"plain", store.User{Name: "alice", TokenHash: "h-alice"}, nil},
		{"duplicate name", store.User{Name: "alice", TokenHash: "h-other"}, store.ErrExists},
		{"duplicate token", store.User{Name: "bob", TokenHash: "h-alice"}, store.ErrExists},
		{"bad name", store.User{Name: "Bob", TokenHash: "h-bob"}, store.ErrInvalid},
		{"empty name", store.User{TokenHash: "h-bob"}, store.ErrInvalid},
		{"empty token", store.User{Name: "bob"}, store.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := db.CreateUser(ctx, tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("CreateUser = %v, want %v", err, tt.want)
			}
			if err != nil {
				return
			}
			if !got.CreatedAt.Equal(testNow) {
				t.Errorf("CreatedAt = %v", got.CreatedAt)
			}
			byName, err := db.User(ctx, tt.in.Name)
			if err != nil || !reflect.DeepEqual(byName, got) {
				t.Errorf("User = %+v, %v; want %+v", byName, err, got)
			}
			byToken, err := db.UserByTokenHash(ctx, tt.in.TokenHash)
			if err != nil || !reflect.DeepEqual(byToken, got) {
				t.Errorf("UserByTokenHash = %+v, %v; want %+v", byToken, err, got)
			}
		})
	}
	users, err := db.ListUsers(ctx)
	if err != nil || len(users) != 2 || users[0].Name != "alice" || users[1].Name != "root-admin" {
		t.Errorf("ListUsers = %+v, %v", users, err)
	}
	if err := db.DeleteUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	notFound := []struct {
		name string
		call func() error
	}{
		{"User", func() error { _, err := db.User(ctx, "alice"); return err }},
		{"User empty", func() error { _, err := db.User(ctx, ""); return err }},
		{"UserByTokenHash", func() error { _, err := db.UserByTokenHash(ctx, "h-alice"); return err }},
		{"UserByTokenHash empty", func() error { _, err := db.UserByTokenHash(ctx, ""); return err }},
		{"DeleteUser", func() error { return db.DeleteUser(ctx, "alice") }},
	}
	for _, c := range notFound {
		t.Run(c.name, func(t *testing.T) {
			if err := c.call(); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
		})
	}
	// The deleted user's token hash is free again.
	if _, err := db.CreateUser(ctx, store.User{Name: "carol", TokenHash: "h-alice"}); err != nil {
		t.Errorf("reuse of a deleted user's token hash: %v", err)
	}
}

func TestIdentityGeneratedOnce(t *testing.T) {
	db := openTestDB(t, nil)
	ctx := context.Background()
	var calls atomic.Int32
	release := make(chan struct{})
	generate := func() (store.Identity, error) {
		calls.Add(1)
		<-release // hold the first caller so the others pile up behind it
		return store.Identity{HostKeys: [][]byte{[]byte("k1"), []byte("k2")}, UserCA: []byte("ca"), ClusterToken: "t"}, nil
	}

	const n = 20
	type result struct {
		id  store.Identity
		err error
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			id, err := db.Identity(ctx, generate)
			results <- result{id, err}
		})
	}
	close(release)
	wg.Wait()
	close(results)
	var first *store.Identity
	for r := range results {
		if r.err != nil {
			t.Fatalf("Identity: %v", r.err)
		}
		if first == nil {
			first = &r.id
		} else if !reflect.DeepEqual(r.id, *first) {
			t.Errorf("callers got different identities: %+v and %+v", r.id, *first)
		}
	}
	if got := calls.Load(); got != 1 {
		t.Errorf("generate called %d times, want 1", got)
	}
	if !first.CreatedAt.Equal(testNow) {
		t.Errorf("CreatedAt = %v", first.CreatedAt)
	}

	// Returned values are copies, and a stored identity is never replaced.
	first.HostKeys[0][0] = 'X'
	other := func() (store.Identity, error) { return store.Identity{ClusterToken: "other"}, nil }
	again, err := db.Identity(ctx, other)
	if err != nil || string(again.HostKeys[0]) != "k1" || again.ClusterToken != "t" {
		t.Errorf("Identity again = %+v, %v", again, err)
	}
}

func TestIdentityGenerateFails(t *testing.T) {
	db := openTestDB(t, nil)
	ctx := context.Background()
	errGen := errors.New("no entropy")
	tests := []struct {
		name     string
		generate func() (store.Identity, error)
		want     error
	}{
		{"generate error", func() (store.Identity, error) { return store.Identity{}, errGen }, errGen},
		{"nil generate", nil, store.ErrNotFound},
		{"then success", func() (store.Identity, error) { return store.Identity{ClusterToken: "t"}, nil }, nil},
		{"nil generate once stored", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := db.Identity(ctx, tt.generate)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Identity = %v, want %v", err, tt.want)
			}
			if err == nil && id.ClusterToken != "t" {
				t.Errorf("Identity = %+v", id)
			}
		})
	}
}
