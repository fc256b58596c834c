package embedded

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/kohakuriver/kohakuriver/store"
)

// Records are stored as JSON (the struct tags of package store): readable
// with `bbolt get`, and tolerant of fields added later. Decoders check the
// fields the indexes depend on, so a damaged record is reported instead of
// corrupting an index.

var errNotObject = errors.New("record is not a JSON object")

func encode(v any) ([]byte, error) { return json.Marshal(v) }

// decodeObject unmarshals data, which must be one JSON object.
func decodeObject(data []byte, v any) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return errNotObject
	}
	return json.Unmarshal(data, v)
}

// decodeVPS decodes a vps record. It never panics, whatever data holds.
func decodeVPS(data []byte) (store.VPS, error) {
	var v store.VPS
	if err := decodeObject(data, &v); err != nil {
		return store.VPS{}, fmt.Errorf("decode vps: %w", err)
	}
	if !store.IsTaskID(v.TaskID) {
		return store.VPS{}, fmt.Errorf("decode vps: bad task id %q", v.TaskID)
	}
	if v.SSHPort < 1 || v.SSHPort > 65535 {
		return store.VPS{}, fmt.Errorf("decode vps %s: bad ssh port %d", v.TaskID, v.SSHPort)
	}
	for _, k := range v.Keys {
		if k.Fingerprint == "" || bytes.IndexByte([]byte(k.Fingerprint), 0) >= 0 {
			return store.VPS{}, fmt.Errorf("decode vps %s: bad key fingerprint %q", v.TaskID, k.Fingerprint)
		}
	}
	return normVPS(v), nil
}

func decodeNode(data []byte) (store.Node, error) {
	var n store.Node
	if err := decodeObject(data, &n); err != nil {
		return store.Node{}, fmt.Errorf("decode node: %w", err)
	}
	if n.Name == "" {
		return store.Node{}, errors.New("decode node: empty name")
	}
	return n, nil
}

func decodeUser(data []byte) (store.User, error) {
	var u store.User
	if err := decodeObject(data, &u); err != nil {
		return store.User{}, fmt.Errorf("decode user: %w", err)
	}
	if u.Name == "" || u.TokenHash == "" {
		return store.User{}, fmt.Errorf("decode user %q: empty name or token hash", u.Name)
	}
	return u, nil
}

func decodeIdentity(data []byte) (store.Identity, error) {
	var id store.Identity
	if err := decodeObject(data, &id); err != nil {
		return store.Identity{}, fmt.Errorf("decode identity: %w", err)
	}
	return id, nil
}

// normVPS makes empty slices nil, so that a value compares equal to what
// decoding its encoding returns.
func normVPS(v store.VPS) store.VPS {
	if len(v.Keys) == 0 {
		v.Keys = nil
	}
	if len(v.HostKeys) == 0 {
		v.HostKeys = nil
	}
	return v
}

// cloneVPS returns v with its own copies of the slices.
func cloneVPS(v store.VPS) store.VPS {
	v.Keys = slices.Clone(v.Keys)
	v.HostKeys = slices.Clone(v.HostKeys)
	return normVPS(v)
}

func cloneIdentity(id store.Identity) store.Identity {
	keys := make([][]byte, len(id.HostKeys))
	for i, k := range id.HostKeys {
		keys[i] = bytes.Clone(k)
	}
	id.HostKeys = keys
	id.UserCA = bytes.Clone(id.UserCA)
	return id
}

// portKey is the vps_by_port key of a port in 1-65535.
func portKey(port int) []byte {
	return binary.BigEndian.AppendUint16(nil, uint16(port))
}

// keyPort decodes a vps_by_port key; ok is false for a malformed one.
func keyPort(k []byte) (port int, ok bool) {
	if len(k) != 2 {
		return 0, false
	}
	return int(binary.BigEndian.Uint16(k)), true
}

// keyIndexPrefix is the vps_by_key prefix shared by every VPS holding the
// key. Fingerprints never contain NUL (see decodeVPS and validKeys).
func keyIndexPrefix(fingerprint string) []byte {
	return append([]byte(fingerprint), 0)
}

// keyIndexKey is the vps_by_key entry for one (fingerprint, VPS) pair.
func keyIndexKey(fingerprint, taskID string) []byte {
	return append(keyIndexPrefix(fingerprint), taskID...)
}

// splitKeyIndexKey is the inverse of keyIndexKey.
func splitKeyIndexKey(k []byte) (fingerprint, taskID string, ok bool) {
	i := bytes.IndexByte(k, 0)
	if i <= 0 {
		return "", "", false
	}
	return string(k[:i]), string(k[i+1:]), true
}
