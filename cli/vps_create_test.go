package cli

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/store"
)

// createAPI is a fake host that creates every VPS as testTaskID, or
// answers failStatus when set.
func createAPI(t *testing.T, failStatus int) *fakeAPI {
	return newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/vps" {
			writeAPIError(w, http.StatusNotFound, "unexpected "+r.URL.Path)
			return
		}
		if failStatus != 0 {
			writeAPIError(w, failStatus, "node n1 could not create the VPS: boom")
			return
		}
		var req api.CreateVPSRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeAPIError(w, http.StatusBadRequest, err.Error())
			return
		}
		v := store.VPS{TaskID: testTaskID, Name: req.Name, Node: "n1", Status: store.StatusRunning,
			SSHPort: 9000, LoginUser: "root", KeyMode: req.KeyMode, Owner: "alice"}
		for _, l := range req.PublicKeys {
			k, _ := store.ParseAuthorizedKey(l)
			v.Keys = append(v.Keys, k)
		}
		writeJSON(w, http.StatusCreated, v)
	})
}

// createdRequest decodes the create request the fake received.
func createdRequest(t *testing.T, f *fakeAPI) api.CreateVPSRequest {
	t.Helper()
	var req api.CreateVPSRequest
	if err := json.Unmarshal([]byte(f.body("POST /api/v1/vps")), &req); err != nil {
		t.Fatalf("no create request: %v (calls %v)", err, f.calls())
	}
	return req
}

// kohakuriverKeys lists the files --gen-ssh-key may have left in ~/.ssh.
func kohakuriverKeys(t *testing.T, u *user) []string {
	m, _ := filepath.Glob(filepath.Join(u.home, ".ssh", "kohakuriver_*"))
	return m
}

func TestCreateRefusesBadFlagsBeforeAnyRequest(t *testing.T) {
	t.Parallel()
	goodKey := newPublicKey(t, "me")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{ // "--ssh" and "no id_*.pub" need the file system; the others are usage errors
		{"two modes", []string{"--gen-ssh-key", "--no-ssh-key"}, "--gen-ssh-key and --no-ssh-key cannot be combined: choose one SSH key mode"},
		{"three modes", []string{"--public-key-string", goodKey, "--public-key-file", "x.pub", "--no-ssh-key"},
			"--public-key-file and --public-key-string and --no-ssh-key cannot be combined"},
		{"ssh is no mode", []string{"--ssh", "--gen-ssh-key", "--public-key-string", goodKey}, "--gen-ssh-key and --public-key-string cannot"},
		{"bad key string", []string{"--public-key-string", "ssh-ed25519 notbase64"}, "--public-key-string: not an OpenSSH public key"},
		{"private key as string", []string{"--public-key-string=-----BEGIN OPENSSH PRIVATE KEY-----"}, "--public-key-string is a private key"},
		{"key-out-file alone", []string{"--key-out-file", "/tmp/k"}, "add --gen-ssh-key or drop --key-out-file"},
		{"no id_*.pub", []string{"--ssh"}, "add --gen-ssh-key"},
		{"no id_*.pub, no flag", nil, "no public key found in"},
		{"missing key file", []string{"--public-key-file", "/nonexistent.pub"}, "--public-key-file: open /nonexistent.pub"},
		{"bad name", []string{"--name", "Web_1", "--no-ssh-key"}, "--name: VPS name \"Web_1\" must be"},
		{"reserved name", []string{"--name", "config", "--no-ssh-key"}, "--name: VPS name \"config\" is reserved"},
		{"bad memory", []string{"-m", "lots", "--no-ssh-key"}, "--memory \"lots\": give a size such as 512M"},
		{"bad login user", []string{"--login-user", "Root!", "--no-ssh-key"}, "--login-user: login user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := createAPI(t, 0)
			u := newUser(t)
			u.saveAuth("tok", f.port(), 8002)
			r := u.run(append([]string{"vps", "create"}, tc.args...)...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want %q: %s", tc.want, r)
			}
			if r.code == 2 {
				// A usage error comes first, even without a token.
				if r := newUser(t).run(append([]string{"vps", "create"}, tc.args...)...); r.code != 2 || !strings.Contains(r.stderr, tc.want) {
					t.Fatalf("without a token: want %q: %s", tc.want, r)
				}
			}
			if calls := f.calls(); len(calls) != 0 {
				t.Fatalf("requests sent: %v", calls)
			}
			if k := kohakuriverKeys(t, u); len(k) != 0 {
				t.Fatalf("key files left: %v", k)
			}
		})
	}
}

func TestCreateKeyModes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, u *user) (args []string, wantLine string)
		mode  store.KeyMode
		gen   string // where the private key must end up ("" = none); relative to home
	}{
		{"upload (no flag)", func(t *testing.T, u *user) ([]string, string) {
			_, l := newKeyPair(t, filepath.Join(u.home, ".ssh", "id_ed25519"), "me@laptop")
			return nil, l
		}, store.KeyModeUpload, ""},
		{"upload --ssh", func(t *testing.T, u *user) ([]string, string) {
			_, l := newKeyPair(t, filepath.Join(u.home, ".ssh", "id_ecdsa"), "me@laptop")
			return []string{"--ssh"}, l
		}, store.KeyModeUpload, ""},
		{"gen-ssh-key", func(t *testing.T, u *user) ([]string, string) {
			return []string{"--ssh", "--gen-ssh-key", "--name", "web"}, ""
		}, store.KeyModeGenerated, ".ssh/kohakuriver_" + testTaskID},
		{"gen-ssh-key --key-out-file", func(t *testing.T, u *user) ([]string, string) {
			return []string{"--gen-ssh-key", "--key-out-file", "~/keys/web"}, ""
		}, store.KeyModeGenerated, "keys/web"},
		{"public-key-file", func(t *testing.T, u *user) ([]string, string) {
			p := filepath.Join(u.home, "other.pub")
			_, l := newKeyPair(t, filepath.Join(u.home, "other"), "other")
			return []string{"--public-key-file", p}, l
		}, store.KeyModeFile, ""},
		{"public-key-string", func(t *testing.T, u *user) ([]string, string) {
			l := newPublicKey(t, "colleague")
			return []string{"--ssh", "--public-key-string", l}, l
		}, store.KeyModeString, ""},
		{"no-ssh-key", func(t *testing.T, u *user) ([]string, string) {
			return []string{"--ssh", "--no-ssh-key"}, ""
		}, store.KeyModeNone, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := createAPI(t, 0)
			u := newUser(t)
			u.saveAuth("tok", f.port(), 8002)
			args, wantLine := tc.setup(t, u)
			r := u.run(append([]string{"vps", "create", "-t", "n1", "-c", "2", "-m", "2G"}, args...)...)
			if r.code != 0 {
				t.Fatal(r)
			}
			req := createdRequest(t, f)
			if req.KeyMode != tc.mode || req.Node != "n1" || req.Cores != 2 || req.MemoryMB != 2048 {
				t.Fatalf("request %+v", req)
			}
			if tc.mode == store.KeyModeNone && (req.PublicKeys == nil || len(req.PublicKeys) != 0) {
				t.Fatalf("none mode sends public_keys %v, want []", req.PublicKeys)
			}
			if wantLine != "" && (len(req.PublicKeys) != 1 || req.PublicKeys[0] != wantLine) {
				t.Fatalf("keys %q, want %q", req.PublicKeys, wantLine)
			}
			for _, want := range []string{"task id:", testTaskID, "ssh port:", "9000", "node:", "n1",
				"kohakuriver ssh " + testTaskID, "-p 8002 " + testTaskID + "@127.0.0.1", "-p 9000 root@127.0.0.1",
				"HostKeyAlias=kohakuriver-gateway"} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("output lacks %q:\n%s", want, r.stdout)
				}
			}
			if tc.gen == "" {
				if k := kohakuriverKeys(t, u); len(k) != 0 {
					t.Fatalf("key files made: %v", k)
				}
				return
			}
			priv := filepath.Join(u.home, tc.gen)
			if m := mode(t, priv); m != 0o600 {
				t.Errorf("private key mode %o", m)
			}
			if m := mode(t, priv+".pub"); m != 0o644 {
				t.Errorf("public key mode %o", m)
			}
			pub, _ := os.ReadFile(priv + ".pub")
			if len(req.PublicKeys) != 1 || req.PublicKeys[0] != strings.TrimSpace(string(pub)) {
				t.Fatalf("sent %q, .pub holds %q", req.PublicKeys, pub)
			}
			if strings.Contains(f.body("POST /api/v1/vps"), "PRIVATE") {
				t.Fatal("the private key was sent")
			}
			if !strings.Contains(r.stdout, "-i "+priv) || !strings.Contains(r.stdout, priv+" (it never left this machine)") {
				t.Errorf("output does not name the key %s:\n%s", priv, r.stdout)
			}
			if strings.HasPrefix(tc.gen, "keys/") && !strings.Contains(r.stdout, "kohakuriver ssh "+testTaskID+" --key "+priv) {
				t.Errorf("kohakuriver ssh line lacks --key:\n%s", r.stdout)
			}
			if strings.HasPrefix(tc.gen, "keys/") {
				// Where kohakuriver ssh and ssh config look for the key.
				link := filepath.Join(u.home, ".ssh", "kohakuriver_"+testTaskID)
				if target, err := os.Readlink(link); err != nil || target != priv {
					t.Errorf("%s: link to %q, %v; want a link to %s", link, target, err, priv)
				}
			}
			if left, _ := filepath.Glob(filepath.Join(u.home, ".ssh", "kohakuriver_new_*")); len(left) != 0 {
				t.Errorf("temporary key files left: %v", left)
			}
		})
	}
}

// TestCreateRefusalRemovesGeneratedKey: a 4xx answer means the host
// created nothing, so the new key pair is deleted.
func TestCreateRefusalRemovesGeneratedKey(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusBadRequest, http.StatusForbidden, http.StatusConflict} {
		for _, outFile := range []bool{false, true} {
			t.Run(itoa(status)+map[bool]string{false: "", true: " key-out-file"}[outFile], func(t *testing.T) {
				f := createAPI(t, status)
				u := newUser(t)
				u.saveAuth("tok", f.port(), 8002)
				args := []string{"vps", "create", "--gen-ssh-key"}
				out := filepath.Join(u.home, "keys", "web")
				if outFile {
					args = append(args, "--key-out-file", out)
				}
				r := u.run(args...)
				if r.code != 1 || !strings.Contains(r.stderr, "could not create the VPS: boom") {
					t.Fatal(r)
				}
				if len(f.calls()) == 0 {
					t.Fatal("no create request sent")
				}
				if k := kohakuriverKeys(t, u); len(k) != 0 {
					t.Fatalf("key files left after a refused create: %v", k)
				}
				for _, p := range []string{out, out + ".pub"} {
					if _, err := os.Stat(p); !os.IsNotExist(err) {
						t.Fatalf("%s left after a refused create (stat: %v)", p, err)
					}
				}
				if strings.Contains(r.stderr, "stays at") {
					t.Errorf("claims the key was kept: %s", r)
				}
			})
		}
	}
}

// TestCreateUnclearFailureKeepsGeneratedKey: the host goes on creating
// after the CLI stops listening, so unless it clearly refused, the VPS may
// trust the new key: it must stay, and stderr must say where and how to
// check.
func TestCreateUnclearFailureKeepsGeneratedKey(t *testing.T) {
	t.Parallel()
	fail := func(status int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			writeAPIError(w, status, "node n1 could not create the VPS: boom")
		}
	}
	for _, tc := range []struct {
		name    string
		h       http.HandlerFunc
		wantErr string
	}{
		{"502", fail(http.StatusBadGateway), "kohakuriver vps delete"},
		{"503", fail(http.StatusServiceUnavailable), "boom"},
		{"504 from a proxy", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusGatewayTimeout)
			_, _ = w.Write([]byte("<html>504 Gateway Time-out</html>"))
		}, "HTTP 504"},
		{"connection dropped", func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			conn.Close()
		}, "cannot reach the host API"},
		{"undecodable answer", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte(`{"task_id": `))
		}, "decode answer"},
		{"invalid record", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusCreated, store.VPS{TaskID: "../x", Status: store.StatusRunning})
		}, "invalid task id"},
	} {
		for _, outFile := range []bool{false, true} {
			name := tc.name
			if outFile {
				name += " key-out-file"
			}
			t.Run(name, func(t *testing.T) {
				f := newFakeAPI(t, tc.h)
				u := newUser(t)
				u.saveAuth("tok", f.port(), 8002)
				args := []string{"vps", "create", "--gen-ssh-key", "--name", "web"}
				if outFile {
					args = append(args, "--key-out-file", "~/keys/web")
				}
				r := u.run(args...)
				if r.code != 1 || !strings.Contains(r.stderr, tc.wantErr) {
					t.Fatalf("want %q: %s", tc.wantErr, r)
				}
				key := filepath.Join(u.home, "keys", "web")
				if !outFile {
					m, _ := filepath.Glob(filepath.Join(u.home, ".ssh", "kohakuriver_new_*"))
					if len(m) != 2 {
						t.Fatalf("want the generated pair kept, found %v", m)
					}
					key = strings.TrimSuffix(m[0], ".pub")
				}
				for _, p := range []string{key, key + ".pub"} {
					if _, err := os.Stat(p); err != nil {
						t.Fatalf("generated key deleted: %v\n%s", err, r)
					}
				}
				for _, want := range []string{"private key stays at " + key, "kohakuriver vps list", "kohakuriver vps status web",
					"kohakuriver ssh web --key " + key} {
					if !strings.Contains(r.stderr, want) {
						t.Errorf("stderr lacks %q: %s", want, r)
					}
				}
			})
		}
	}
}

func TestCreateJSON(t *testing.T) {
	t.Parallel()
	f := createAPI(t, 0)
	u := newUser(t)
	u.saveAuth("tok", f.port(), 8002)
	r := u.run("vps", "create", "--gen-ssh-key", "--format", "json", "--name", "web")
	if r.code != 0 {
		t.Fatal(r)
	}
	var got createdVPS
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
	if got.TaskID != testTaskID || got.Name != "web" || got.SSHPort != 9000 || len(got.SSHCommands) != 3 ||
		got.PrivateKeyFile != filepath.Join(u.home, ".ssh", "kohakuriver_"+testTaskID) {
		t.Fatalf("%+v", got)
	}
	// Progress goes to stderr, never into the JSON.
	if !strings.Contains(r.stderr, "Creating the VPS") {
		t.Errorf("no progress line on stderr: %s", r)
	}
}
