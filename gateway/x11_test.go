package gateway

// Channels the VPS opens toward the client. X11 forwarding end to end: the
// OpenSSH client with -Y through the gateway to a real sshd, an X11 client on
// the VPS side, and a fake X server on the client side. Remote forwards
// (tcpip-forward, answered by forwarded-tcpip channels) and their
// per-connection limit. Assumes xauth and python3 besides OpenSSH.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// x11Marker is what the X11 client sends after its connection setup.
const x11Marker = "kohakuriver-x11-marker\n"

// x11ClientScript runs on the VPS: it reads the cookie sshd stored for the
// forwarded display, sends an X11 connection setup (X Window System Protocol,
// section 8 "Connection Setup") carrying it, then the marker, and prints the
// cookie it used and the fake server's answer.
const x11ClientScript = `
import os, socket, struct, subprocess
host, rest = os.environ["DISPLAY"].rsplit(":", 1)
num = int(rest.split(".")[0])
fields = subprocess.check_output(["xauth", "list"], text=True).splitlines()[0].split()
name, cookie = fields[1].encode(), bytes.fromhex(fields[2])
pad = lambda b: b + b"\0" * (-len(b) % 4)
setup = struct.pack("<BxHHHHxx", ord("l"), 11, 0, len(name), len(cookie)) + pad(name) + pad(cookie)
s = socket.create_connection((host or "localhost", 6000 + num), timeout=20)
s.sendall(setup + MARKER)
reply = b""
while not reply.endswith(b"\n"):
    d = s.recv(100)
    if not d:
        break
    reply += d
print("cookie", cookie.hex())
print("reply", reply.decode().strip())
`

// x11Setup is what the fake X server read from one connection.
type x11Setup struct {
	order        byte
	major, minor uint16
	authName     string
	authData     []byte
	rest         []byte
	err          error
}

// fakeXServer listens on 127.0.0.1:6000+n for a free display n and answers
// the first connection: it reads an X11 setup and the marker, and replies
// "x11-ok\n".
func fakeXServer(t *testing.T) (display int, got <-chan x11Setup) {
	t.Helper()
	var ln net.Listener
	for n := 20; n < 100 && ln == nil; n++ {
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(6000+n)); err == nil {
			ln, display = l, n
		}
	}
	if ln == nil {
		t.Skip("no free X display port in 6020-6099")
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan x11Setup, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- x11Setup{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		ch <- readX11Setup(c)
		_, _ = io.WriteString(c, "x11-ok\n")
	}()
	return display, ch
}

func readX11Setup(r io.Reader) x11Setup {
	var s x11Setup
	hdr := make([]byte, 12)
	if _, s.err = io.ReadFull(r, hdr); s.err != nil {
		return s
	}
	s.order = hdr[0]
	var bo binary.ByteOrder = binary.LittleEndian
	if s.order == 'B' {
		bo = binary.BigEndian
	}
	s.major, s.minor = bo.Uint16(hdr[2:]), bo.Uint16(hdr[4:])
	nameLen, dataLen := int(bo.Uint16(hdr[6:])), int(bo.Uint16(hdr[8:]))
	pad := func(n int) int { return (n + 3) &^ 3 }
	body := make([]byte, pad(nameLen)+pad(dataLen)+len(x11Marker))
	if _, s.err = io.ReadFull(r, body); s.err != nil {
		return s
	}
	s.authName = string(body[:nameLen])
	s.authData = body[pad(nameLen) : pad(nameLen)+dataLen]
	s.rest = body[pad(nameLen)+pad(dataLen):]
	return s
}

func TestX11Forwarding(t *testing.T) {
	requireTools(t, "xauth")
	py, err := exec.LookPath("/usr/bin/python3")
	if err != nil {
		requireTools(t, "python3")
		py, _ = exec.LookPath("python3")
	}
	dir := t.TempDir()
	// sshd stores the cookie it hands the session with xauth, in the login
	// user's ~/.Xauthority by default: point it at a file of the test's.
	remoteAuth := filepath.Join(dir, "remote.xauth")
	wrapper := filepath.Join(dir, "xauth")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nXAUTHORITY="+remoteAuth+" exec /usr/bin/xauth \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "x11client.py")
	code := strings.Replace(x11ClientScript, "MARKER", "b"+strconv.Quote(x11Marker), 1)
	if err := os.WriteFile(script, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}

	g := newTestGateway(t, nil)
	key := newUserKey(t)
	// Displays from 200 up on the VPS side keep clear of the fake server's.
	g.addVPSConfigured(t, "xvps", "X11DisplayOffset 200\nXAuthLocation "+wrapper, key)

	display, got := fakeXServer(t)
	cookie := make([]byte, 16)
	_, _ = rand.Read(cookie)
	localAuth := filepath.Join(dir, "local.xauth")
	mustRun(t, nil, "xauth", "-f", localAuth, "add", fmt.Sprintf("127.0.0.1:%d", display), "MIT-MAGIC-COOKIE-1", hex.EncodeToString(cookie))

	env := []string{fmt.Sprintf("DISPLAY=127.0.0.1:%d", display), "XAUTHORITY=" + localAuth}
	remote := "XAUTHORITY=" + remoteAuth + " " + py + " " + script
	out, errOut, status := runTool(t, env, nil, "ssh", g.sshArgs(key, g.port(), "-Y", "xvps@127.0.0.1", remote)...)
	if status != 0 {
		t.Fatalf("ssh -Y: status %d\nstdout: %s\nstderr: %s", status, out, errOut)
	}
	var setup x11Setup
	select {
	case setup = <-got:
	case <-time.After(30 * time.Second):
		t.Fatalf("the fake X server got no connection; stdout %q stderr %q", out, errOut)
	}
	if setup.err != nil {
		t.Fatalf("fake X server: %v", setup.err)
	}
	if setup.order != 'l' || setup.major != 11 || setup.minor != 0 || setup.authName != "MIT-MAGIC-COOKIE-1" {
		t.Fatalf("X11 setup: order %q protocol %d.%d auth %q", setup.order, setup.major, setup.minor, setup.authName)
	}
	// ssh swaps the fake cookie the VPS knows for the real one.
	if !bytes.Equal(setup.authData, cookie) {
		t.Fatalf("X server got cookie %x, want the client's real %x", setup.authData, cookie)
	}
	if string(setup.rest) != x11Marker {
		t.Fatalf("after the setup the X server got %q, want the marker", setup.rest)
	}
	var remoteCookie, reply string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			switch f[0] {
			case "cookie":
				remoteCookie = f[1]
			case "reply":
				reply = f[1]
			}
		}
	}
	if reply != "x11-ok" {
		t.Fatalf("the X11 client on the VPS got %q back; stdout %q", reply, out)
	}
	if remoteCookie == "" || remoteCookie == hex.EncodeToString(cookie) {
		t.Fatalf("the VPS saw cookie %q: it must see a stand-in, never the real one", remoteCookie)
	}
}

func TestForwardLimit(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.MaxForwards = 3 })
	key := newUserKey(t)
	g.addVPS(t, "flim", 0, key)
	client := dialGo(t, g, key, "flim")
	var lns []net.Listener
	for i := 0; i < 3; i++ {
		l, err := client.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("forward %d: %v", i+1, err)
		}
		lns = append(lns, l)
	}
	if l, err := client.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
		t.Fatal("a 4th forward was granted with MaxForwards 3")
	}
	if err := lns[0].Close(); err != nil { // cancel-tcpip-forward, answered
		t.Fatal(err)
	}
	l, err := client.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("forward after a cancel: %v", err)
	}
	defer l.Close()
	// It carries traffic: the VPS's listener (this host's loopback) comes
	// back to the client as a forwarded-tcpip channel.
	go func() {
		if c, err := l.Accept(); err == nil {
			_, _ = io.Copy(c, c)
			c.Close()
		}
	}()
	expectEchoRaw(t, l.Addr().String())
}

// expectEchoRaw checks that addr echoes bytes back.
func expectEchoRaw(t testing.TB, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo through the forward: %q %v", buf, err)
	}
}

// TestForwardLimitCountsGrantedForwards: a forward the VPS refuses (its port
// is taken) must not use up the limit, or a few refusals lock the user out of
// -R for the rest of the connection, where a direct login would work.
func TestForwardLimitCountsGrantedForwards(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.MaxForwards = 2 })
	key := newUserKey(t)
	g.addVPS(t, "fref", 0, key)
	client := dialGo(t, g, key, "fref")
	taken, err := net.Listen("tcp", "127.0.0.1:0") // the VPS shares this loopback
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for i := 0; i < 3; i++ {
		if l, err := client.Listen("tcp", taken.Addr().String()); err == nil {
			l.Close()
			t.Fatal("the VPS granted a forward on a port in use")
		}
	}
	l, err := client.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("first granted forward refused after 3 refused ones: %v", err)
	}
	l.Close()
}

// TestForwardLimitNotBypassedByCancel: cancelling forwards that were never
// granted must not raise the limit.
func TestForwardLimitNotBypassedByCancel(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.MaxForwards = 2 })
	key := newUserKey(t)
	g.addVPS(t, "fcancel", 0, key)
	client := dialGo(t, g, key, "fcancel")
	for i := 0; i < 3; i++ {
		payload := gossh.Marshal(struct {
			Host string
			Port uint32
		}{"127.0.0.1", uint32(1000 + i)})
		if ok, _, err := client.SendRequest("cancel-tcpip-forward", true, payload); ok || err != nil {
			t.Fatalf("cancel of a forward never made: ok=%v err=%v", ok, err)
		}
	}
	granted := 0
	for i := 0; i < 4; i++ {
		l, err := client.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			break
		}
		defer l.Close()
		granted++
	}
	if granted != 2 {
		t.Fatalf("%d forwards granted with MaxForwards 2", granted)
	}
}
