package gateway

// Benchmarks of the relay, for regressions: run with
//
//	go test -run '^$' -bench . -benchtime 2x ./gateway/
//
// (or -benchtime 20x for steadier numbers). BenchmarkRelayThroughput and
// BenchmarkConnect go Go client -> gateway -> a real OpenSSH sshd on
// 127.0.0.1 (they skip without /usr/sbin/sshd, like the other tests);
// BenchmarkRelayInProcess replaces the sshd by an x/crypto server in this
// process, so it measures the gateway's own cost with no OpenSSH at all.
// Besides ns/op and MB/s they report cpu-s/GiB: this process's CPU time
// (client, gateway and, for the in-process one, the server) per GiB.
// BenchmarkRelayVsDirect puts the gateway beside OpenSSH in one run: the
// same upload into the same sshd, through the gateway and straight, op by
// op, and reports the ratio. The full-path comparison with OpenSSH's own
// client and ProxyJump is gateway/bench.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// benchUpload is what one throughput op sends.
const benchUpload = 64 << 20

// BenchmarkRelayThroughput uploads 64 MiB per op into `cat > /dev/null`
// through the gateway and a real sshd.
func BenchmarkRelayThroughput(b *testing.B) {
	g := newTestGateway(b, func(c *Config) { c.Throttle.MaxFailures = -1 })
	key := newUserKey(b)
	v, _ := g.addVPS(b, "bench", 0, key)
	client := dialGo(b, g, key, v.Name)
	benchUploads(b, client, "cat > /dev/null")
}

// BenchmarkRelayVsDirect alternates, op by op, a benchUpload into `cat >
// /dev/null` through the gateway and the same upload straight into the
// gateway's upstream sshd (logged in as the hop is, certAuth), so that
// machine noise hits both
// alike. Both clients are x/crypto with aes128-gcm, so the difference is
// the gateway: the second key exchange and the decrypt, copy and encrypt
// of every byte. Reports each path's MB/s and gateway/direct.
func BenchmarkRelayVsDirect(b *testing.B) {
	g := newTestGateway(b, func(c *Config) { c.Throttle.MaxFailures = -1 })
	key := newUserKey(b)
	v, d := g.addVPS(b, "bench", 0, key)
	viaGateway := dialGo(b, g, key, v.Name)
	direct := dialDirect(b, g, d)
	chunk := benchChunk(b)
	var onGateway, onDirect time.Duration
	b.SetBytes(2 * benchUpload)
	for b.Loop() {
		onGateway += uploadOnce(b, viaGateway, "cat > /dev/null", chunk)
		onDirect += uploadOnce(b, direct, "cat > /dev/null", chunk)
	}
	mbps := func(d time.Duration) float64 { return float64(b.N) * benchUpload / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(onGateway), "gateway-MB/s")
	b.ReportMetric(mbps(onDirect), "direct-MB/s")
	b.ReportMetric(onDirect.Seconds()/onGateway.Seconds(), "gateway/direct")
}

// dialDirect logs in to d, the sshd behind g, as the hop does (certAuth),
// pinning d's host key, with the cipher the gateway uses on its hop.
func dialDirect(b *testing.B, g *testGateway, d *sshd) *gossh.Client {
	b.Helper()
	hostKey, _, _, _, err := gossh.ParseAuthorizedKey([]byte(d.hostKey))
	if err != nil {
		b.Fatal(err)
	}
	cfg := &gossh.ClientConfig{
		User:            loginUser(b),
		Auth:            []gossh.AuthMethod{certAuth(b, g.ca, loginUser(b))},
		HostKeyCallback: gossh.FixedHostKey(hostKey),
		Timeout:         10 * time.Second,
		Config:          gossh.Config{Ciphers: []string{cipherAES128GCM}},
	}
	client, err := gossh.Dial("tcp", d.addr, cfg)
	if err != nil {
		b.Fatalf("direct to %s: %v", d.addr, err)
	}
	b.Cleanup(func() { client.Close() })
	return client
}

// BenchmarkRelayInProcess is BenchmarkRelayThroughput with an x/crypto
// server standing in for the sshd: no OpenSSH, no other process.
func BenchmarkRelayInProcess(b *testing.B) {
	g := newTestGateway(b, func(c *Config) { c.Throttle.MaxFailures = -1 })
	key := newUserKey(b)
	v := g.addSinkVPS(b, "sink", key)
	client := dialGo(b, g, key, v.Name)
	benchUploads(b, client, "sink")
}

// BenchmarkConnect is one whole login per op: TCP connect, key exchange and
// public key auth to the gateway, the hop to the sshd, a session running
// `true`, and the close.
func BenchmarkConnect(b *testing.B) {
	g := newTestGateway(b, func(c *Config) { c.Throttle.MaxFailures = -1 })
	key := newUserKey(b)
	v, _ := g.addVPS(b, "bench", 0, key)
	cfg := benchClientConfig(g, key, v.Name)
	addr := g.srv.Addr().String()
	for b.Loop() {
		client, err := gossh.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		s, err := client.NewSession()
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Run("true"); err != nil {
			b.Fatalf("true: %v", err)
		}
		client.Close()
	}
}

// benchUploads runs the throughput loop: each op opens a session running
// command and writes benchUpload bytes to its stdin, then waits for exit
// status 0.
func benchUploads(b *testing.B, client *gossh.Client, command string) {
	b.Helper()
	chunk := benchChunk(b)
	b.SetBytes(benchUpload)
	cpu0 := benchCPU(b)
	for b.Loop() {
		uploadOnce(b, client, command, chunk)
	}
	gib := float64(b.N) * benchUpload / (1 << 30)
	b.ReportMetric((benchCPU(b)-cpu0)/gib, "cpu-s/GiB")
}

// benchChunk is what the uploads write, 1 MiB at a time: random, so that
// nothing on the way could make it cheaper.
func benchChunk(b *testing.B) []byte {
	chunk := make([]byte, 1<<20)
	if _, err := rand.Read(chunk); err != nil {
		b.Fatal(err)
	}
	return chunk
}

// uploadOnce opens a session running command on client, writes
// benchUpload bytes of chunk to its stdin, and waits for exit status 0. It
// returns how long that took, session open to exit status.
func uploadOnce(b *testing.B, client *gossh.Client, command string, chunk []byte) time.Duration {
	b.Helper()
	start := time.Now()
	s, err := client.NewSession()
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	stdin, err := s.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(command); err != nil {
		b.Fatal(err)
	}
	for sent := 0; sent < benchUpload; sent += len(chunk) {
		if _, err := stdin.Write(chunk); err != nil {
			b.Fatalf("write after %d bytes: %v", sent, err)
		}
	}
	stdin.Close()
	if err := s.Wait(); err != nil {
		b.Fatalf("%s: %v", command, err)
	}
	return time.Since(start)
}

// benchCPU is this process's user + system CPU time in seconds.
func benchCPU(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func benchClientConfig(g *testGateway, key userKey, user string) *gossh.ClientConfig {
	var pubs []gossh.PublicKey
	for _, h := range g.hostKeys {
		pubs = append(pubs, h.PublicKey())
	}
	return &gossh.ClientConfig{
		User:            user,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(key.signer)},
		HostKeyCallback: pinnedHostKey(pubs),
		Timeout:         10 * time.Second,
	}
}

// addSinkVPS registers a running VPS whose "sshd" is an x/crypto server in
// this process: it accepts the gateway's hop certificate, and each session
// reads its stdin to EOF, then exits 0.
func (g *testGateway) addSinkVPS(b *testing.B, name string, keys ...userKey) store.VPS {
	b.Helper()
	hostSigner := newHostSigner(b)
	ca := g.ca.PublicKey().Marshal()
	checker := &gossh.CertChecker{IsUserAuthority: func(k gossh.PublicKey) bool { return bytes.Equal(k.Marshal(), ca) }}
	cfg := &gossh.ServerConfig{PublicKeyCallback: checker.Authenticate}
	cfg.AddHostKey(hostSigner)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go serveSink(nc, cfg)
		}
	}()

	v := store.VPS{
		TaskID: store.NewTaskID(), Name: name, Owner: "alice", Node: "node1",
		Status: store.StatusRunning, LoginUser: loginUser(b),
		HostKeys: []string{strings.TrimSpace(string(gossh.MarshalAuthorizedKey(hostSigner.PublicKey())))},
	}
	for _, k := range keys {
		v.Keys = append(v.Keys, k.auth)
	}
	g.hop.mu.Lock()
	g.hop.addrs[v.TaskID] = ln.Addr().String()
	g.hop.mu.Unlock()
	g.dir.put(v)
	return v
}

func serveSink(nc net.Conn, cfg *gossh.ServerConfig) {
	sc, chans, reqs, err := gossh.NewServerConn(nc, cfg)
	if err != nil {
		nc.Close()
		return
	}
	defer sc.Close()
	go gossh.DiscardRequests(reqs)
	for newCh := range chans {
		if newCh.ChannelType() != "session" {
			_ = newCh.Reject(gossh.UnknownChannelType, fmt.Sprintf("sink: no %s channels", newCh.ChannelType()))
			continue
		}
		ch, chReqs, err := newCh.Accept()
		if err != nil {
			continue
		}
		go func() {
			for req := range chReqs {
				ok := req.Type == "exec" || req.Type == "shell"
				if req.WantReply {
					_ = req.Reply(ok, nil)
				}
				if ok {
					go func() {
						_, _ = io.Copy(io.Discard, ch)
						_, _ = ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, 0))
						ch.Close()
					}()
				}
			}
		}()
	}
}
