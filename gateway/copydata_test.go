package gateway

import (
	"bytes"
	"crypto/rand"
	"io"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// chunkReader returns data in the chunk sizes given, as a channel's Read
// returns whatever has arrived, then EOF.
type chunkReader struct {
	data   []byte
	chunks []int
	reads  int
	bufs   []int // len(p) of every Read
	// goroutines is the goroutine of every Read.
	goroutines []string
}

// goroutineID is the calling goroutine's number, from its stack trace's
// first line ("goroutine 7 [running]:").
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf))
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

// copyAndWait runs copyData and waits until it has called back.
func copyAndWait(t *testing.T, dst io.Writer, src io.Reader) {
	t.Helper()
	ended := make(chan struct{})
	copyData(dst, src, func() { close(ended) })
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("copyData never ended")
	}
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.bufs = append(r.bufs, len(p))
	r.goroutines = append(r.goroutines, goroutineID())
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	r.reads++
	n := len(r.data)
	if len(r.chunks) > 0 {
		n = min(n, r.chunks[0])
	}
	n = copy(p, r.data[:n])
	r.data = r.data[n:]
	if len(r.chunks) > 0 {
		// A chunk bigger than p stays partly buffered, as in a channel.
		if r.chunks[0] -= n; r.chunks[0] == 0 {
			r.chunks = r.chunks[1:]
		}
	}
	return n, nil
}

// recordingWriter keeps every write's size.
type recordingWriter struct {
	bytes.Buffer
	sizes []int
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return w.Buffer.Write(p)
}

// TestCopyDataModes moves data through the idle, packet and bulk buffers
// and back: every byte must arrive in order, a chunk that fits the buffer
// in use must go out as one write (one SSH packet), and the bulk buffer is
// used only right after a read that filled its buffer: any other read may
// block for as long as the session idles, and must not hold a bulk buffer.
func TestCopyDataModes(t *testing.T) {
	const p, b = packetCopyBuf, bulkCopyBuf
	chunks := []int{
		1, 3, idleCopyBuf - 1, // keystrokes and a prompt: idle buffer
		idleCopyBuf,   // fills it: packet buffer next
		p + 7232,      // fills the packet buffer: bulk buffer next, not filled
		p + b + 36160, // packet, bulk (filled), bulk
		5000,          // short: packet buffer
		burstSize,     // no more than a burst: idle buffer again
		2, 100,
		idleCopyBuf + p + 6986, // idle (filled), packet (filled), bulk
		7,
	}
	total := 0
	for _, c := range chunks {
		total += c
	}
	data := make([]byte, total)
	_, _ = rand.Read(data)
	src := &chunkReader{data: data, chunks: append([]int(nil), chunks...)}
	var dst recordingWriter
	copyAndWait(t, &dst, src)
	if !bytes.Equal(dst.Bytes(), data) {
		t.Fatalf("copied %d bytes, not the %d sent in order", dst.Len(), len(data))
	}
	wantWrites := []int{
		1, 3, idleCopyBuf - 1, idleCopyBuf,
		p, 7232,
		p, b, 36160,
		5000,
		burstSize,
		2, 100,
		idleCopyBuf, p, 6986,
		7,
	}
	wantBufs := []int{
		idleCopyBuf, idleCopyBuf, idleCopyBuf, idleCopyBuf,
		p, b,
		p, b, b,
		p,
		p,
		idleCopyBuf, idleCopyBuf,
		idleCopyBuf, p, b,
		p,
		idleCopyBuf, // the read that sees EOF
	}
	if !slices.Equal(dst.sizes, wantWrites) {
		t.Errorf("writes %v, want %v", dst.sizes, wantWrites)
	}
	if !slices.Equal(src.bufs, wantBufs) {
		t.Errorf("read buffers %v, want %v", src.bufs, wantBufs)
	}
	// A read that follows a write in the idle buffer's mode, where the
	// copy would park while the session idles, runs on a fresh goroutine;
	// a bulk stream stays on its own.
	wantNewGoroutine := []bool{
		false, true, true, true, // idle reads, each after an idle write
		false, false, false, false, false, false, false, // the burst
		true, true, true, // after the burst, and after each idle write
		false, false, false, // the second burst
		true, // EOF, after it
	}
	var got []bool
	for i := range src.goroutines {
		got = append(got, i > 0 && src.goroutines[i] != src.goroutines[i-1])
	}
	if !slices.Equal(got, wantNewGoroutine) {
		t.Errorf("reads on a new goroutine: %v, want %v", got, wantNewGoroutine)
	}
}

// failingWriter fails every write.
type failingWriter struct{ writes int }

func (w *failingWriter) Write([]byte) (int, error) { w.writes++; return 0, io.ErrClosedPipe }

// TestCopyDataStopsOnWriteError: a destination that failed ends the copy
// at once, in either mode, instead of draining the source.
func TestCopyDataStopsOnWriteError(t *testing.T) {
	for _, first := range []int{10, idleCopyBuf} {
		src := &chunkReader{data: make([]byte, 4*bulkCopyBuf), chunks: []int{first, bulkCopyBuf}}
		var dst failingWriter
		copyAndWait(t, &dst, src)
		if dst.writes != 1 || src.reads != 1 {
			t.Fatalf("first chunk %d: %d writes and %d reads after a failed write, want 1 and 1", first, dst.writes, src.reads)
		}
	}
}
