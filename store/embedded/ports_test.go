package embedded

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/kohakuriver/kohakuriver/store"
)

func TestPortAllocation(t *testing.T) {
	db := openTestDB(t, &Options{PortMin: 20000, PortMax: 20004})
	ctx := context.Background()
	byPort := map[int]string{}
	create := func() (int, error) {
		v, err := db.CreateVPS(ctx, newVPS(""))
		if err == nil {
			byPort[v.SSHPort] = v.TaskID
		}
		return v.SSHPort, err
	}
	del := func(port int) {
		if err := db.DeleteVPS(ctx, byPort[port]); err != nil {
			t.Fatalf("DeleteVPS(port %d): %v", port, err)
		}
		delete(byPort, port)
	}
	steps := []struct {
		name   string
		delete []int
		want   []int // ports handed out by successive creates, 0 = ErrNoFreePort
	}{
		{"in order", nil, []int{20000, 20001, 20002, 20003, 20004}},
		{"exhausted", nil, []int{0, 0}},
		{"reuse freed port", []int{20002}, []int{20002, 0}},
		// After the port handed out last, then round from the bottom: a
		// freed port is not the next one while others wait their turn.
		{"after the last one, then wrap", []int{20003, 20000}, []int{20003, 20000, 0}},
		{"top of range", []int{20004}, []int{20004}},
		{"wrap from the top", []int{20001}, []int{20001}},
		{"higher before lower", []int{20000, 20003}, []int{20003, 20000, 0}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			for _, p := range s.delete {
				del(p)
			}
			for i, want := range s.want {
				got, err := create()
				switch {
				case want == 0 && !errors.Is(err, store.ErrNoFreePort):
					t.Errorf("create %d: port %d, err %v; want ErrNoFreePort", i, got, err)
				case want != 0 && (err != nil || got != want):
					t.Errorf("create %d: port %d, err %v; want %d", i, got, err, want)
				}
			}
		})
	}
}

func TestPortAllocationConcurrent(t *testing.T) {
	const n = 50
	db := openTestDB(t, &Options{PortMin: 21000, PortMax: 21000 + n - 1})
	ctx := context.Background()
	type result struct {
		v   store.VPS
		err error
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			v, err := db.CreateVPS(ctx, newVPS(fmt.Sprintf("vm-%d", i), i))
			results <- result{v, err}
		})
	}
	wg.Wait()
	close(results)
	seen := map[int]string{}
	for r := range results {
		if r.err != nil {
			t.Errorf("CreateVPS: %v", r.err)
			continue
		}
		if other, dup := seen[r.v.SSHPort]; dup {
			t.Errorf("port %d given to %s and %s", r.v.SSHPort, other, r.v.TaskID)
		}
		seen[r.v.SSHPort] = r.v.TaskID
	}
	if len(seen) != n {
		t.Errorf("%d distinct ports, want %d", len(seen), n)
	}
	if _, err := db.CreateVPS(ctx, newVPS("")); !errors.Is(err, store.ErrNoFreePort) {
		t.Errorf("create %d+1: %v, want ErrNoFreePort", n, err)
	}
}

// fillPorts writes n vps_by_port entries from first, as 10,000 VPSs would,
// without the records: allocPort reads only the index.
func fillPorts(tb testing.TB, db *DB, first, n int, skip int) {
	tb.Helper()
	err := db.bdb.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVPSByPort)
		for p := first; p < first+n; p++ {
			if p == skip {
				continue
			}
			if err := b.Put(portKey(p), []byte(store.NewTaskID())); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

func TestAllocPortManyAllocated(t *testing.T) {
	tests := []struct {
		name    string
		skip    int // a free port inside the filled range, 0 = none
		want    int
		wantErr error
	}{
		{"gap in the middle", 25000, 25000, nil},
		{"first free after the block", 0, 30000, nil},
		{"range exhausted", 0, 0, store.ErrNoFreePort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			portMax := 30000
			if tt.wantErr != nil {
				portMax = 29999
			}
			db := openTestDB(t, &Options{PortMin: 20000, PortMax: portMax})
			fillPorts(t, db, 20000, 10000, tt.skip)
			var got int
			var ok bool
			if err := db.bdb.View(func(tx *bolt.Tx) error {
				got, ok = firstFreePort(tx.Bucket(bucketVPSByPort), db.portMin, db.portMax)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if ok != (tt.wantErr == nil) || (ok && got != tt.want) {
				t.Errorf("firstFreePort = %d, %v; want %d, free %v", got, ok, tt.want, tt.wantErr == nil)
			}
			// Leave the file consistent for the cleanup check.
			if err := db.bdb.Update(func(tx *bolt.Tx) error {
				if err := tx.DeleteBucket(bucketVPSByPort); err != nil {
					return err
				}
				_, err := tx.CreateBucket(bucketVPSByPort)
				return err
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// BenchmarkAllocPort10k measures allocation with 10,000 ports taken below the
// first gap: the worst case of a full range.
func BenchmarkAllocPort10k(b *testing.B) {
	db, err := Open(b.TempDir()+"/store.db", &Options{PortMin: 20000, PortMax: 40000})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	fillPorts(b, db, 20000, 10000, 0)
	for b.Loop() {
		err := db.bdb.View(func(tx *bolt.Tx) error {
			if _, ok := firstFreePort(tx.Bucket(bucketVPSByPort), db.portMin, db.portMax); !ok {
				return store.ErrNoFreePort
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
