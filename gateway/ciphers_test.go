package gateway

import (
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

func TestPeekVersion(t *testing.T) {
	tests := []struct {
		name        string
		send        string
		wantVersion string
	}{
		{name: "openssh", send: "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\nKEXINIT...", wantVersion: "SSH-2.0-OpenSSH_9.2p1 Debian-2"},
		{name: "dropbear", send: "SSH-2.0-dropbear_2022.83\r\n", wantVersion: "SSH-2.0-dropbear_2022.83"},
		{name: "line before version", send: "hello\r\nSSH-2.0-x\r\n", wantVersion: ""},
		{name: "silent client", send: "", wantVersion: ""},
		{name: "partial line", send: "SSH-2.0-slo", wantVersion: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, client := net.Pipe()
			defer server.Close()
			defer client.Close()
			go func() { _, _ = io.WriteString(client, tt.send) }()
			start := time.Now()
			version, conn := peekVersion(server)
			if version != tt.wantVersion {
				t.Fatalf("version %q, want %q", version, tt.wantVersion)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("peek did not give up")
			}
			// Whatever was read is replayed, byte for byte.
			if tt.send != "" {
				buf := make([]byte, len(tt.send))
				_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != tt.send {
					t.Fatalf("replayed %q (%v), want %q", buf, err, tt.send)
				}
			}
		})
	}
}

func TestCiphersFor(t *testing.T) {
	s := &Server{}
	if !hasAESHardware() {
		t.Skip("no AES instructions: every client gets the full set")
	}
	if got := s.ciphersFor("SSH-2.0-OpenSSH_9.2p1"); !slices.Equal(got, fastCiphers) {
		t.Fatalf("OpenSSH offered %v", got)
	}
	for _, v := range []string{"SSH-2.0-dropbear_2022.83", "SSH-2.0-paramiko_2.12.0", "SSH-2.0-PuTTY_Release_0.78", ""} {
		if got := s.ciphersFor(v); !slices.Contains(got, cipherAES128CTR) || got[0] != cipherAES128GCM {
			t.Fatalf("%q offered %v", v, got)
		}
	}
	s.cfg.Ciphers = []string{cipherChaCha}
	if got := s.ciphersFor("SSH-2.0-OpenSSH_9.2p1"); !slices.Equal(got, []string{cipherChaCha}) {
		t.Fatalf("configured ciphers ignored: %v", got)
	}
}
