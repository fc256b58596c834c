package docker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	gossh "golang.org/x/crypto/ssh"
)

// Where host keys go in a VPS. The drop-in's HostKey lines make sshd load
// exactly the installed keys, so an image with host keys baked in (every
// container of it would share them) still presents this VPS's own. Debian's
// sshd_config includes sshd_config.d/*.conf; in images whose sshd_config
// does not, sshd falls back to the default ssh_host_<type>_key paths, which
// are the ones written here too.
const (
	hostKeyDir     = "/etc/ssh"
	hostKeyDropIn  = "sshd_config.d/00-kohakuriver-hostkeys.conf"
	hostKeyMaxSize = 64 << 10
)

// hostKeyTypes are the ssh_host_<type>_key names sshd knows, in the order
// Info.HostKeys lists them.
var hostKeyTypes = []string{"ed25519", "ecdsa", "rsa"}

// hostKey is one host key ready to install.
type hostKey struct {
	typ  string // "ed25519", "ecdsa" or "rsa": the file name part
	priv []byte // OpenSSH-format PEM
	pub  string // authorized_keys format, no comment
}

// prepareHostKeys parses the given PEM private keys, or generates one
// ed25519 key when there are none, and re-encodes each in OpenSSH format
// (which every sshd reads, unlike PKCS#8 ed25519) with comment.
func prepareHostKeys(pems [][]byte, comment string) ([]hostKey, error) {
	var raws []any
	for i, p := range pems {
		k, err := gossh.ParseRawPrivateKey(p)
		if err != nil {
			return nil, fmt.Errorf("host key %d: %w", i+1, err)
		}
		raws = append(raws, k)
	}
	if len(raws) == 0 {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate host key: %w", err)
		}
		raws = append(raws, k)
	}
	var keys []hostKey
	for i, k := range raws {
		var typ string
		switch k.(type) {
		case ed25519.PrivateKey, *ed25519.PrivateKey:
			typ = "ed25519"
		case *ecdsa.PrivateKey:
			typ = "ecdsa"
		case *rsa.PrivateKey:
			typ = "rsa"
		default:
			return nil, fmt.Errorf("host key %d: unsupported type %T", i+1, k)
		}
		if slices.ContainsFunc(keys, func(h hostKey) bool { return h.typ == typ }) {
			return nil, fmt.Errorf("host key %d: a second %s key (sshd loads one per type)", i+1, typ)
		}
		block, err := gossh.MarshalPrivateKey(k, comment)
		if err != nil {
			return nil, fmt.Errorf("host key %d: %w", i+1, err)
		}
		signer, err := gossh.NewSignerFromKey(k)
		if err != nil {
			return nil, fmt.Errorf("host key %d: %w", i+1, err)
		}
		keys = append(keys, hostKey{typ: typ, priv: pem.EncodeToMemory(block), pub: authorizedKey(signer.PublicKey())})
	}
	slices.SortFunc(keys, func(a, b hostKey) int {
		return slices.Index(hostKeyTypes, a.typ) - slices.Index(hostKeyTypes, b.typ)
	})
	return keys, nil
}

// authorizedKey formats k as "TYPE BASE64".
func authorizedKey(k gossh.PublicKey) string {
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(k)))
}

// installHostKeys writes keys into container id: each private key 0600 and
// its .pub 0644, root-owned (sshd refuses a private key others can read),
// and the drop-in naming them.
func (rt *Runtime) installHostKeys(ctx context.Context, id string, keys []hostKey) error {
	var conf strings.Builder
	conf.WriteString("# Written by kohakuriver: this VPS's own host keys.\n")
	var entries []tarEntry
	for _, k := range keys {
		name := "ssh_host_" + k.typ + "_key"
		fmt.Fprintf(&conf, "HostKey %s\n", path.Join(hostKeyDir, name))
		entries = append(entries,
			tarEntry{name: name, mode: 0o600, body: k.priv},
			tarEntry{name: name + ".pub", mode: 0o644, body: []byte(k.pub + "\n")},
		)
	}
	entries = append(entries, tarEntry{name: hostKeyDropIn, mode: 0o644, body: []byte(conf.String())})
	if err := rt.copyTo(ctx, id, hostKeyDir, entries); err != nil {
		return fmt.Errorf("install host keys: %w", err)
	}
	return nil
}

// Bounds on reading and reporting one VPS's host keys. The VPS's root
// controls the drop-in and the key files, and every heartbeat carries every
// VPS's keys in one body the host caps at 1 MiB (clusterauth.MaxBodySize):
// a drop-in naming thousands of paths must cost neither thousands of
// archive copies per start nor the other VPSes their place in the
// heartbeat. sshd loads one key per type, so real setups stay well within.
const (
	maxHostKeyPaths = 8       // distinct HostKey paths read
	maxHostKeyBytes = 8 << 10 // total length of the authorized_keys lines reported
)

// readHostKeys returns the public halves of the host keys sshd loads in
// container id, derived from the private keys (a .pub file could be
// stale): the drop-in's HostKey paths, or the default paths without it.
//
// It is best effort, because the VPS's root owns these files and one VPS
// must not fail the node's report: a key that is missing, not a regular
// file, too big or not a usable private key is skipped, and problems says
// for the log what was skipped and why (paths and reasons, never key
// material). err is set only when ctx ended or the engine did not answer,
// which cut the read short for reasons that are not the VPS's.
func (rt *Runtime) readHostKeys(ctx context.Context, id string) (keys, problems []string, err error) {
	return collectHostKeys(ctx, func(p string) ([]byte, error) {
		return rt.readFile(ctx, id, p, hostKeyMaxSize)
	})
}

// collectHostKeys is readHostKeys, with read returning one file of the
// container (an error matching cerrdefs.IsNotFound when it is missing).
func collectHostKeys(ctx context.Context, read func(p string) ([]byte, error)) (keys, problems []string, err error) {
	cutShort := func(err error) bool { return ctx.Err() != nil || client.IsErrConnectionFailed(err) }
	dropIn := path.Join(hostKeyDir, hostKeyDropIn)
	var paths []string
	conf, err := read(dropIn)
	switch {
	case err == nil:
		var more bool
		paths, more = hostKeyPaths(conf, maxHostKeyPaths)
		if more {
			problems = append(problems, fmt.Sprintf("%s names more than %d host keys, read the first %d", dropIn, maxHostKeyPaths, maxHostKeyPaths))
		}
	case cutShort(err):
		return nil, nil, err
	case !cerrdefs.IsNotFound(err):
		problems = append(problems, fmt.Sprintf("%v, read the default paths", err))
	}
	if len(paths) == 0 {
		for _, t := range hostKeyTypes {
			paths = append(paths, path.Join(hostKeyDir, "ssh_host_"+t+"_key"))
		}
	}
	var lines hostKeyLines
	for _, p := range paths {
		data, err := read(p)
		if cerrdefs.IsNotFound(err) {
			continue
		}
		if err != nil && cutShort(err) {
			return nil, nil, err
		}
		if err == nil {
			err = lines.add(data)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("skipped host key %s: %v", p, err))
		}
	}
	if len(lines.keys) == 0 && len(problems) == 0 {
		problems = append(problems, "no host key found")
	}
	return lines.keys, problems, nil
}

// hostKeyLines collects the authorized_keys lines to report.
type hostKeyLines struct {
	keys []string
	size int
}

// add adds the public half of a private key file, once, unless that would
// take the total past maxHostKeyBytes. Its errors are fixed texts: the
// file's content, whatever its root put there, never reaches the log.
func (h *hostKeyLines) add(data []byte) error {
	signer, err := gossh.ParsePrivateKey(data)
	var missing *gossh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		return errors.New("passphrase protected")
	case err != nil:
		return errors.New("not a private key")
	}
	line := authorizedKey(signer.PublicKey())
	if slices.Contains(h.keys, line) {
		return nil
	}
	if h.size+len(line) > maxHostKeyBytes {
		return fmt.Errorf("the keys before it fill the %d bytes reported per VPS", maxHostKeyBytes)
	}
	h.keys = append(h.keys, line)
	h.size += len(line)
	return nil
}

// hostKeyPaths returns the distinct absolute paths of the HostKey lines in
// an sshd config snippet, the first limit of them, and whether it names
// more.
func hostKeyPaths(conf []byte, limit int) (paths []string, more bool) {
	sc := bufio.NewScanner(bytes.NewReader(conf))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || !strings.EqualFold(f[0], "HostKey") || !path.IsAbs(f[1]) {
			continue
		}
		p := path.Clean(f[1])
		switch {
		case slices.Contains(paths, p):
		case len(paths) == limit:
			return paths, true
		default:
			paths = append(paths, p)
		}
	}
	return paths, false
}

// hostKeyCache holds each container's host keys for the start they were read
// in (keyed by container ID and State.StartedAt). A zero value is ready.
type hostKeyCache struct {
	mu sync.Mutex
	m  map[string]cachedHostKeys
}

type cachedHostKeys struct {
	started string
	keys    []string
}

// maxCachedHostKeys bounds the cache: past it, it starts over (containers
// removed behind the agent's back are never forgotten otherwise).
const maxCachedHostKeys = 4096

func (c *hostKeyCache) get(id, started string) ([]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || e.started != started { // put stores no "" (never started)
		return nil, false
	}
	return slices.Clone(e.keys), true
}

func (c *hostKeyCache) put(id, started string, keys []string) {
	if started == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedHostKeys {
		c.m = map[string]cachedHostKeys{}
	}
	c.m[id] = cachedHostKeys{started: started, keys: slices.Clone(keys)}
}

func (c *hostKeyCache) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}
