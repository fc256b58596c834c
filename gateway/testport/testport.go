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
// its own range.
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// Ranges below the ephemeral one, one per test package that uses this.
const (
	GatewayMin, GatewayMax = 10000, 16000
	CLIMin, CLIMax         = 16000, 18000
	HostMin, HostMax       = 18000, 20000
)

// Free returns a port in [min, max) that nothing listened on at 127.0.0.1 a
// moment ago, tried at random.
func Free(min, max int) (int, error) {
	for range 200 {
		p := min + rand.IntN(max-min)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no free port found in %d-%d on 127.0.0.1 after 200 tries", min, max-1)
}
