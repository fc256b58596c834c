package gateway

import (
	"bytes"
	"net"
	"strings"
	"time"

	"golang.org/x/sys/cpu"
)

// Cipher names as SSH spells them.
const (
	cipherAES128GCM = "aes128-gcm@openssh.com"
	cipherAES256GCM = "aes256-gcm@openssh.com"
	cipherChaCha    = "chacha20-poly1305@openssh.com"
	cipherAES128CTR = "aes128-ctr"
	cipherAES192CTR = "aes192-ctr"
	cipherAES256CTR = "aes256-ctr"
)

// hopCiphers are used on the gateway->VPS hop, which the gateway controls:
// AES-GCM runs several GB/s per core with AES-NI, while x/crypto's
// chacha20-poly1305 has no assembly on amd64 (about 9x slower).
var hopCiphers = []string{cipherAES128GCM, cipherAES256GCM, cipherChaCha}

// CompatCiphers is every cipher the gateway can serve, AES-GCM first.
func CompatCiphers() []string {
	return []string{cipherAES128GCM, cipherAES256GCM, cipherChaCha, cipherAES128CTR, cipherAES192CTR, cipherAES256CTR}
}

// fastCiphers is what OpenSSH clients are offered on a CPU with AES
// instructions. SSH picks the client's most preferred cipher among those
// the server offers, and OpenSSH prefers chacha20-poly1305, then AES-CTR,
// then AES-GCM: offering only AES-GCM makes it pick the fastest one here.
// Every OpenSSH since 6.2 (2013) has AES-GCM.
var fastCiphers = []string{cipherAES128GCM, cipherAES256GCM}

// ciphersFor chooses the ciphers offered to a client from its version
// string (read before the handshake, see peekVersion). Config.Ciphers, when
// set, wins. Clients other than OpenSSH get the full set: Debian 12's
// Dropbear (2022.83) and Paramiko (2.12) have no AES-GCM at all, and a
// client that prefers AES-CTR or ChaCha gets it.
func (s *Server) ciphersFor(clientVersion string) []string {
	if len(s.cfg.Ciphers) > 0 {
		return s.cfg.Ciphers
	}
	if hasAESHardware() && strings.HasPrefix(clientVersion, "SSH-2.0-OpenSSH_") {
		return fastCiphers
	}
	return CompatCiphers()
}

func hasAESHardware() bool {
	return (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) || (cpu.ARM64.HasAES && cpu.ARM64.HasPMULL)
}

// versionPeekTimeout bounds how long the gateway waits for a client to
// send its version string first. Clients send it on connect (RFC 4253
// section 4.2 allows either side to go first); one that waits for the
// server's just gets the full cipher set after this delay.
const versionPeekTimeout = 300 * time.Millisecond

// peekConn replays the bytes read by peekVersion before reading on.
type peekConn struct {
	net.Conn
	buf []byte
}

// WriteConn returns the wrapped conn: peekConn changes only reads.
func (p *peekConn) WriteConn() net.Conn { return p.Conn }

func (p *peekConn) Read(b []byte) (int, error) {
	if len(p.buf) > 0 {
		n := copy(b, p.buf)
		p.buf = p.buf[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// peekVersion reads the client's identification line, if it comes within
// versionPeekTimeout, and returns it with a conn that replays it.
func peekVersion(nc net.Conn) (string, net.Conn) {
	p := &peekConn{Conn: nc}
	_ = nc.SetReadDeadline(time.Now().Add(versionPeekTimeout))
	defer nc.SetReadDeadline(time.Time{})
	chunk := make([]byte, 256)
	for len(p.buf) < 255 {
		n, err := nc.Read(chunk)
		p.buf = append(p.buf, chunk[:n]...)
		if i := bytes.IndexByte(p.buf, '\n'); i >= 0 {
			line := strings.TrimRight(string(p.buf[:i]), "\r")
			if strings.HasPrefix(line, "SSH-") {
				return line, p
			}
			// RFC 4253 allows other lines before the version: give up
			// peeking and let x/crypto handle them.
			return "", p
		}
		if err != nil {
			break
		}
	}
	return "", p
}
