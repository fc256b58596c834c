package testport

import (
	"net"
	"strconv"
	"testing"
)

// TestFree: the port is in the range and free; a range whose only port is
// taken is an error, not a loop or a port outside it.
func TestFree(t *testing.T) {
	p, err := Free(Gateway)
	if err != nil {
		t.Fatal(err)
	}
	if p < Gateway.Min || p >= Gateway.Max {
		t.Fatalf("port %d outside %d-%d", p, Gateway.Min, Gateway.Max-1)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("port %d was said to be free: %v", p, err)
	}
	defer l.Close()
	if q, err := Free(Range{p, p + 1}); err == nil {
		t.Fatalf("Free of a range whose only port is taken = %d, want an error", q)
	}
}

// TestBlock: a block lies within its range, starts on a multiple of its
// size from the range's start, and ends before the range does.
func TestBlock(t *testing.T) {
	for range 1000 {
		b := Block(HostBlocks, 30)
		if b < HostBlocks.Min || b+30 > HostBlocks.Max || (b-HostBlocks.Min)%30 != 0 {
			t.Fatalf("block %d-%d not aligned within %d-%d", b, b+29, HostBlocks.Min, HostBlocks.Max-1)
		}
	}
}
