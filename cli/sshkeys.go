package cli

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/store"
)

// Key files on the user's machine, shared by `up` and `vps create`.

// maxKeyFile bounds how much of a public key file is read.
const maxKeyFile = 256 << 10

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// publicKeyFile is one public key found on this machine.
type publicKeyFile struct {
	Path string
	Line string // normalised authorized_keys line
}

// findPublicKeys returns the keys of home/.ssh/id_*.pub; files that hold no
// valid public key are skipped.
func findPublicKeys(home string) ([]publicKeyFile, error) {
	paths, _ := filepath.Glob(filepath.Join(home, ".ssh", "id_*.pub"))
	var keys []publicKeyFile
	for _, p := range paths {
		b, err := readSmallFile(p)
		if err != nil {
			return nil, err
		}
		if k, err := store.ParseAuthorizedKey(strings.TrimSpace(string(b))); err == nil {
			keys = append(keys, publicKeyFile{Path: p, Line: k.Line})
		}
	}
	return keys, nil
}

// readSmallFile reads at most maxKeyFile bytes of path.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("%s is larger than %d KiB: not a public key file", path, maxKeyFile>>10)
	}
	return b, nil
}

// generateKeyPair writes a new ed25519 key at path (0600, never
// overwriting a file) and its public half at path.pub (0644), and returns
// the public line. comment defaults to "kohakuriver-<file name>". The
// private key never leaves this machine.
func generateKeyPair(path, comment string) (string, error) {
	if fileExists(path) || fileExists(path+".pub") {
		return "", fmt.Errorf("%s already exists; choose another path or remove it", path)
	}
	if comment == "" {
		comment = "kohakuriver-" + filepath.Base(path)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	block, err := gossh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	if err := writeNewFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", err
	}
	sshPub, err := gossh.NewPublicKey(pub)
	if err != nil {
		os.Remove(path)
		return "", err
	}
	line := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sshPub))) + " " + comment
	if err := writeNewFile(path+".pub", []byte(line+"\n"), 0o644); err != nil {
		os.Remove(path)
		return "", err
	}
	return line, nil
}

// writeNewFile creates path with exactly mode (whatever the umask) and
// fails if it exists.
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr, os.Chmod(path, mode)); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// removeKeyPair deletes a generated key and its .pub.
func removeKeyPair(path string) {
	os.Remove(path)
	os.Remove(path + ".pub")
}

// moveKeyPair renames a key and its .pub; it refuses to replace existing
// files.
func moveKeyPair(from, to string) error {
	if fileExists(to) || fileExists(to+".pub") {
		return fmt.Errorf("%s already exists", to)
	}
	if err := os.Rename(from, to); err != nil {
		return err
	}
	if err := os.Rename(from+".pub", to+".pub"); err != nil {
		_ = os.Rename(to, from)
		return err
	}
	return nil
}

// writeFileAtomic replaces path with data (mode perm) through a temporary
// file in the same directory, creating the directory (0700) if needed.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp, perm)); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
