package gateway

import "golang.org/x/sys/cpu"

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

// defaultCiphers is what the gateway offers clients. SSH picks the client's
// most preferred cipher that the server offers, and OpenSSH clients prefer
// chacha20-poly1305, then AES-CTR, then AES-GCM. On a CPU with AES and
// carry-less multiply instructions, offering only AES-GCM makes every
// current client use it (OpenSSH >= 6.2, PuTTY >= 0.76, Dropbear >= 2020.79,
// Go, Paramiko >= 2.9 with cryptography); elsewhere the full modern set is
// offered. Operators who must serve older clients set Config.Ciphers.
func defaultCiphers() []string {
	if hasAESHardware() {
		return []string{cipherAES128GCM, cipherAES256GCM}
	}
	return []string{cipherChaCha, cipherAES128GCM, cipherAES256GCM, cipherAES128CTR, cipherAES192CTR, cipherAES256CTR}
}

// CompatCiphers is every cipher the gateway can serve, for Config.Ciphers
// when old clients matter more than throughput.
func CompatCiphers() []string {
	return []string{cipherAES128GCM, cipherAES256GCM, cipherChaCha, cipherAES128CTR, cipherAES192CTR, cipherAES256CTR}
}

func hasAESHardware() bool {
	return (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) || (cpu.ARM64.HasAES && cpu.ARM64.HasPMULL)
}
