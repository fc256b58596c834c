package embedded

import (
	"bytes"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

// fuzzSeedVPSs are records as CreateVPS and UpdateVPS store them; more seeds
// live in testdata/fuzz/FuzzDecodeVPS.
func fuzzSeedVPSs() []store.VPS {
	full := newVPS("web", 1, 2)
	full.TaskID = "1234567890123456789"
	full.SSHPort = 9000
	full.LoginUser = "root"
	full.Status = store.StatusRunning
	full.HostKeys = []string{testKey(3).Line}
	full.Message = "ok"
	full.CreatedAt, full.UpdatedAt = testNow, testNow
	bare := store.VPS{TaskID: "1999999999999999999", SSHPort: 65535, Owner: "a", Node: "n"}
	return []store.VPS{full, bare}
}

// FuzzDecodeVPS checks that decoding a stored VPS record never panics, and
// that whatever it accepts survives an encode/decode round trip unchanged.
func FuzzDecodeVPS(f *testing.F) {
	for _, v := range fuzzSeedVPSs() {
		data, err := encode(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		f.Add(data[:len(data)/2])
	}
	for _, s := range []string{
		"", "null", "{}", "[]", `"x"`, "\x00\xff",
		`{"task_id":"1234567890123456789","ssh_port":0}`,
		`{"task_id":"1234567890123456789","ssh_port":70000}`,
		`{"task_id":"1234567890123456789","ssh_port":9000,"keys":[{"fingerprint":""}]}`,
		`{"task_id":"1234567890123456789","ssh_port":9000,"keys":[{"fingerprint":"a\u0000b"}]}`,
		`{"task_id":"1234567890123456789","ssh_port":9000,"created_at":"not a time"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeVPS(data)
		if err != nil {
			return
		}
		if !store.IsTaskID(v.TaskID) || v.SSHPort < 1 || v.SSHPort > 65535 {
			t.Fatalf("accepted a record the indexes cannot hold: %+v", v)
		}
		again, err := encode(v)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := decodeVPS(again)
		if err != nil {
			t.Fatalf("decode of re-encoded %q: %v", again, err)
		}
		// Compare encodings: decoded times carry fresh *time.Location
		// values, so the structs are not DeepEqual even when equal.
		if third, err := encode(back); err != nil || !bytes.Equal(third, again) {
			t.Fatalf("round trip changed the record:\n%s\n%s (%v)", again, third, err)
		}
	})
}

// FuzzDecodeRecords checks the other decoders never panic on garbage.
func FuzzDecodeRecords(f *testing.F) {
	for _, s := range []string{
		"", "null", "{}", `{"name":"n1","address":"h:1"}`, `{"name":"u","token_hash":"h"}`,
		`{"host_keys":["AAAA"],"user_ca":"AAAA","cluster_token":"t"}`, `{"host_keys":[1]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if n, err := decodeNode(data); err == nil && n.Name == "" {
			t.Fatalf("accepted a node without a name: %q", data)
		}
		if u, err := decodeUser(data); err == nil && (u.Name == "" || u.TokenHash == "") {
			t.Fatalf("accepted a user without name or token: %q", data)
		}
		_, _ = decodeIdentity(data)
	})
}
