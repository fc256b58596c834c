// Package testport picks loopback TCP ports for tests that must name a port
// before something listens on it (a VPS port, a daemon's flags).
//
// Binding port 0 and closing the listener is not enough for that: the port
// goes back to the kernel's ephemeral range (32768-60999 on Linux), from which
// every outgoing connection takes its local port, and with the test packages
// running in parallel one sometimes did take it before the test listened
// ("address already in use", a gateway that never listened on a VPS port).
// Ports below that range are never handed out by the kernel, so a port found
// free there stays free unless a test picks it too: each package picks from
// its own range, all declared here so that they cannot overlap unnoticed.
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// Range is the ports [Min, Max).
type Range struct{ Min, Max int }

// The ranges, below the ephemeral one, one per use.
var (
	Gateway    = Range{10000, 16000} // package gateway's tests
	CLI        = Range{16000, 18000} // package cli's tests
	Host       = Range{18000, 20000} // package host's single ports
	HostBlocks = Range{20000, 32768} // package host's blocks of VPS ports
)

// Free returns a port in r that nothing listened on at 127.0.0.1 a moment
// ago, tried at random.
func Free(r Range) (int, error) {
	for range 200 {
		p := r.Min + rand.IntN(r.Max-r.Min)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no free port found in %d-%d on 127.0.0.1 after 200 tries", r.Min, r.Max-1)
}

// Pick is Free, failing tb if there is none.
func Pick(tb testing.TB, r Range) int {
	tb.Helper()
	p, err := Free(r)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// Block returns the first of n consecutive ports in r, aligned to n, at
// random (not checked: a host under test listens on them as it needs them).
func Block(r Range, n int) int {
	return r.Min + rand.IntN((r.Max-r.Min)/n-1)*n
}
