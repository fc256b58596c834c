package host

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the host daemon's GOGC unless the environment sets one.
//
// The relay allocates a fresh buffer per SSH packet inside x/crypto (about
// two bytes allocated per byte relayed) while its live heap stays small, so
// with Go's default of 100 the collector runs every few MiB relayed. It is
// a trade: the more garbage may pile up between collections, the more the
// long-lived objects of connections set up meanwhile end up scattered over
// mostly free heap spans, which stay resident. Measured with gateway/bench
// (250 idle sessions; 512 MiB uploads, CPU of the bench process): 100
// costs 4.6 core-s/GiB and 62 KiB of heap per session, 200 4.0 and 68,
// 400 3.9 and 86.
const DefaultGCPercent = 200

// TuneRuntime applies DefaultGCPercent when GOGC is not set. Daemons call it
// once at start; it is a process-wide setting, so the library never does.
func TuneRuntime() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
	}
}
