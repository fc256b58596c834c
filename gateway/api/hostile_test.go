package api

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHostileClients: garbage, an oversized header and a slowloris header
// against the API server as the host runs it (NewHTTPServer): each is cut
// by the server, nothing panics, and the API still answers afterwards.
func TestHostileClients(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewHTTPServer("", e.srv)
	srv.ReadHeaderTimeout = time.Second // shortened from 10 s to keep the test quick
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		// Shutdown waits for the connection goroutines (goleak checks).
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
	})
	addr := ln.Addr().String()

	attacks := map[string]func(c net.Conn){
		"random bytes": func(c net.Conn) {
			b := make([]byte, 8192)
			_, _ = rand.Read(b)
			_, _ = c.Write(b)
		},
		"oversized header": func(c net.Conn) {
			_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 200<<10)+"\r\n\r\n")
		},
		"slowloris": func(c net.Conn) {
			_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
			for i := 0; i < 20; i++ {
				if _, err := io.WriteString(c, "X-Slow: 1\r\n"); err != nil {
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		},
	}
	for name, attack := range attacks {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			attack(c)
			_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
			_, err = io.ReadAll(c)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the server kept the connection open")
			}
		})
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("API after the attacks: %v %v", resp, err)
	}
	resp.Body.Close()
}
