package gateway

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/relay"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestReadAheadConnKeepsTheStream: reads of every size, through bursts and
// pauses, return exactly the bytes written, and the borrowed buffer goes
// back once the stream pauses.
func TestReadAheadConnKeepsTheStream(t *testing.T) {
	w, r := tcpPair(t)
	ra := newReadAheadConn(r)
	data := make([]byte, 8<<20)
	_, _ = rand.Read(data)
	go func() {
		rest := data
		for len(rest) > 0 {
			n := min(len(rest), 1+mrand.IntN(200<<10))
			if _, err := w.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
			if mrand.IntN(8) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	var got bytes.Buffer
	sizes := []int{1, 4, 4096, 100, 32 << 10, 7, 300 << 10}
	for i := 0; got.Len() < len(data); i++ {
		p := make([]byte, sizes[i%len(sizes)])
		n, err := ra.Read(p)
		got.Write(p[:n])
		if err != nil {
			t.Fatalf("read after %d bytes: %v", got.Len(), err)
		}
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("bytes differ from what was written")
	}
	// The writer is done: the next read blocks with nothing borrowed, and
	// returns the error when the peer closes.
	w.Close()
	if n, err := ra.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("after close: %d %v, want 0 EOF", n, err)
	}
	if ra.buf != nil {
		t.Fatal("buffer still borrowed after the stream ended")
	}
}

// spyConn records the size of every Read it is given.
type spyConn struct {
	net.Conn
	reads []int
}

func (s *spyConn) Read(p []byte) (int, error) {
	s.reads = append(s.reads, len(p))
	return s.Conn.Read(p)
}

// TestReadAheadConnIdlesWithoutBuffer: after a burst that the read-ahead
// buffer took in (a fill it did not fill), the read that waits for the
// next data goes into the caller's buffer, not the big one: an idle
// session must not hold it.
func TestReadAheadConnIdlesWithoutBuffer(t *testing.T) {
	w, r := tcpPair(t)
	spy := &spyConn{Conn: r}
	ra := newReadAheadConn(spy)
	burst := make([]byte, 100<<10)
	_, _ = rand.Read(burst)
	if _, err := w.Write(burst); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	p := make([]byte, 4096)
	for got.Len() < len(burst) {
		n, err := ra.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		got.Write(p[:n])
	}
	if !bytes.Equal(got.Bytes(), burst) {
		t.Fatal("burst bytes differ")
	}
	if !slices.Contains(spy.reads, readAheadSize) {
		t.Fatalf("socket reads %v: the burst was never read ahead", spy.reads)
	}
	done := make(chan error, 1)
	go func() {
		n, err := ra.Read(p)
		if err == nil && string(p[:n]) != "next" {
			err = fmt.Errorf("read %q, want %q", p[:n], "next")
		}
		done <- err
	}()
	if _, err := w.Write([]byte("next")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if last := spy.reads[len(spy.reads)-1]; last != len(p) {
		t.Fatalf("the read after the burst went into a %d-byte buffer, want the caller's %d (socket reads %v)", last, len(p), spy.reads)
	}
	if ra.buf != nil {
		t.Fatal("read-ahead buffer still borrowed while idle")
	}
}

// TestCoalesceConnKeepsTheStream: writes in x/crypto's pattern (a full 4 KiB
// write followed by the rest) and lone 4 KiB writes arrive complete and in
// order; a lone held write is sent by the timer without a following write.
func TestCoalesceConnKeepsTheStream(t *testing.T) {
	w, r := tcpPair(t)
	cc := newCoalesceConn(w)
	type result struct {
		got []byte
		err error
	}
	var total int
	sizes := make(chan int, 1)
	read := make(chan result, 1)
	go func() {
		// Read while the writes go on (the socket buffers are smaller
		// than what is written); the total is known once writing ends.
		var got bytes.Buffer
		_ = r.SetReadDeadline(time.Now().Add(30 * time.Second))
		want := -1
		buf := make([]byte, 64<<10)
		for {
			select {
			case want = <-sizes:
			default:
			}
			if want >= 0 && got.Len() >= want {
				break
			}
			n, err := r.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				read <- result{got.Bytes(), err}
				return
			}
		}
		read <- result{got.Bytes(), nil}
	}()
	var want bytes.Buffer
	for i := 0; i < 200; i++ {
		first := make([]byte, xcryptoWriteBuf)
		rest := make([]byte, mrand.IntN(40<<10))
		_, _ = rand.Read(first)
		_, _ = rand.Read(rest)
		for _, p := range [][]byte{first, rest} {
			if _, err := cc.Write(p); err != nil {
				t.Fatal(err)
			}
			want.Write(p)
		}
	}
	lone := bytes.Repeat([]byte{'x'}, xcryptoWriteBuf)
	want.Write(lone)
	// The reader learns the total before the last bytes can arrive.
	total = want.Len()
	sizes <- total
	if _, err := cc.Write(lone); err != nil {
		t.Fatal(err)
	}
	// No further write: the timer must send the held 4 KiB, or the reader
	// never sees the total and times out.
	res := <-read
	if res.err != nil {
		t.Fatalf("read %d of %d bytes: %v (a held write was never sent?)", len(res.got), total, res.err)
	}
	if !bytes.Equal(res.got, want.Bytes()) {
		t.Fatal("bytes differ from what was written")
	}
}

// TestCoalesceConnCloseUnblocksWriter: Close must not wait for a Write that
// is stuck because the peer stopped reading.
func TestCoalesceConnCloseUnblocksWriter(t *testing.T) {
	w, _ := tcpPair(t) // the peer never reads
	cc := newCoalesceConn(w)
	errc := make(chan error, 1)
	go func() {
		big := make([]byte, 1<<20)
		for {
			if _, err := cc.Write(big); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond) // let the socket buffers fill
	closed := make(chan struct{})
	go func() { cc.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked behind a stuck Write")
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("write succeeded after close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stuck Write did not end when the conn closed")
	}
}

// TestCoalesceConnWritesToTheSocket: the joined write must reach the TCP
// socket itself, through the wrappers the gateway puts around it, or
// net.Buffers falls back to one write(2) per buffer and nothing is joined
// (as it did before WriteConn: the profile showed two writes per packet).
// A wrapper that changes what is written (TLS) must not be unwrapped.
func TestCoalesceConnWritesToTheSocket(t *testing.T) {
	w, r := tcpPair(t)
	tlsConn := tls.Client(w, &tls.Config{InsecureSkipVerify: true})
	for _, tc := range []struct {
		name string
		conn net.Conn
		want net.Conn
	}{
		{"socket", w, w},
		{"peekConn", &peekConn{Conn: w}, w},
		{"relay.Conn", &relay.Conn{Conn: w}, w},
		{"peekConn over relay.Conn", &peekConn{Conn: &relay.Conn{Conn: w}}, w},
		{"TLS", &peekConn{Conn: tlsConn}, tlsConn},
	} {
		cc := newCoalesceConn(tc.conn)
		if cc.socket != tc.want {
			t.Errorf("%s: joined writes go to %T, want %T", tc.name, cc.socket, tc.want)
		}
	}
	// And the bytes still arrive whole through the wrappers.
	cc := newCoalesceConn(&peekConn{Conn: &relay.Conn{Conn: w}})
	want := make([]byte, xcryptoWriteBuf+30000)
	_, _ = rand.Read(want)
	go func() {
		_, _ = cc.Write(want[:xcryptoWriteBuf])
		_, _ = cc.Write(want[xcryptoWriteBuf:])
	}()
	got := make([]byte, len(want))
	_ = r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes differ from what was written")
	}
}
