package testport

import (
	"net"
	"strconv"
	"testing"
)

// TestFree: the port is in the range and free; a range whose only port is
// taken is an error, not a loop or a port outside it.
func TestFree(t *testing.T) {
	p, err := Free(GatewayMin, GatewayMax)
	if err != nil {
		t.Fatal(err)
	}
	if p < GatewayMin || p >= GatewayMax {
		t.Fatalf("port %d outside %d-%d", p, GatewayMin, GatewayMax-1)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("port %d was said to be free: %v", p, err)
	}
	defer l.Close()
	if q, err := Free(p, p+1); err == nil {
		t.Fatalf("Free of a range whose only port is taken = %d, want an error", q)
	}
}
