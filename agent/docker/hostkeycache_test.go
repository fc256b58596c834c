package docker

import (
	"fmt"
	"slices"
	"testing"
)

func TestHostKeyCache(t *testing.T) {
	var c hostKeyCache
	if _, ok := c.get("a", "t1"); ok {
		t.Fatal("hit in an empty cache")
	}
	keys := []string{"ssh-ed25519 AAAA1"}
	c.put("a", "t1", keys)
	keys[0] = "changed by the caller"
	got, ok := c.get("a", "t1")
	if !ok || !slices.Equal(got, []string{"ssh-ed25519 AAAA1"}) {
		t.Fatalf("get = %v, %v; want the keys as put", got, ok)
	}
	got[0] = "changed by a reader"
	if again, _ := c.get("a", "t1"); again[0] != "ssh-ed25519 AAAA1" {
		t.Fatal("a reader changed the cached keys")
	}
	if _, ok := c.get("a", "t2"); ok {
		t.Fatal("hit after the container started again")
	}
	c.put("b", "", keys)
	if _, ok := c.get("b", ""); ok {
		t.Fatal("hit for a container that never started")
	}
	c.forget("a")
	if _, ok := c.get("a", "t1"); ok {
		t.Fatal("hit after forget")
	}
	for i := 0; i < maxCachedHostKeys+1; i++ {
		c.put(fmt.Sprint("id", i), "t", keys)
	}
	if n := len(c.m); n > maxCachedHostKeys {
		t.Fatalf("cache holds %d entries, bound %d", n, maxCachedHostKeys)
	}
}
