package store

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

func testKeyLine(t testing.TB) (string, string) {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sp, _ := gossh.NewPublicKey(pub)
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sp))), gossh.FingerprintSHA256(sp)
}

func TestParseAuthorizedKey(t *testing.T) {
	line, fp := testKeyLine(t)
	body := strings.Fields(line)[1]
	tests := []struct {
		name     string
		in       string
		wantLine string
		errMatch string
	}{
		{name: "plain", in: line, wantLine: line},
		{name: "comment kept", in: line + " alice@laptop", wantLine: line + " alice@laptop"},
		{name: "options stripped", in: `no-pty,command="/bin/evil" ` + line + " c", wantLine: line + " c"},
		{name: "spaces trimmed", in: "  " + line + "  \t", wantLine: line},
		{name: "control chars dropped from comment", in: line + " a\x1bb", wantLine: line + " ab"},
		{name: "empty", in: "   ", errMatch: "empty public key"},
		{name: "two lines", in: line + "\n" + line, errMatch: "one public key per line"},
		{name: "garbage", in: "ssh-ed25519 !!!notbase64", errMatch: "not an OpenSSH public key"},
		{name: "private key pasted", in: "-----BEGIN OPENSSH PRIVATE KEY-----", errMatch: "not an OpenSSH public key"},
		{name: "truncated base64", in: "ssh-ed25519 " + body[:20], errMatch: "not an OpenSSH public key"},
		{name: "too long", in: line + " " + strings.Repeat("x", 20000), errMatch: "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseAuthorizedKey(tt.in)
			if tt.errMatch != "" {
				if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.errMatch) {
					t.Fatalf("err = %v, want ErrInvalid containing %q", err, tt.errMatch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.Line != tt.wantLine || k.Fingerprint != fp {
				t.Fatalf("got %+v, want line %q fp %s", k, tt.wantLine, fp)
			}
		})
	}
}

func TestParseAuthorizedKeysDedupes(t *testing.T) {
	a, _ := testKeyLine(t)
	b, _ := testKeyLine(t)
	keys, err := ParseAuthorizedKeys("# mine\n" + a + " one\n\n" + b + "\n" + a + " again\n")
	if err != nil || len(keys) != 2 {
		t.Fatalf("got %v %v, want 2 keys", keys, err)
	}
	if _, err := ParseAuthorizedKeys(a + "\nbogus\n"); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("error should name the line: %v", err)
	}
}

// FuzzParseAuthorizedKey: whatever a user pastes, the result is an error or
// a single-line key that parses back to the same fingerprint.
func FuzzParseAuthorizedKey(f *testing.F) {
	line, _ := testKeyLine(f)
	for _, seed := range []string{line, line + " comment", "no-pty " + line, "", "ssh-rsa AAAA", line + "\n" + line} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		k, err := ParseAuthorizedKey(in)
		if err != nil {
			return
		}
		if strings.ContainsAny(k.Line, "\r\n") {
			t.Fatalf("normalised line has a line break: %q", k.Line)
		}
		again, err := ParseAuthorizedKey(k.Line)
		if err != nil || again != k {
			t.Fatalf("normalised line does not round-trip: %q -> %+v, %v", k.Line, again, err)
		}
	})
}

func TestNames(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{{"web", true}, {"a", true}, {"dev-box-2", true}, {"9lives", true}, {"123", false}, {"-x", false},
		{"Web", false}, {"a_b", false}, {strings.Repeat("a", 63), true}, {strings.Repeat("a", 64), false}, {"", false}} {
		if err := ValidateName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
	// New VPSs: the same rules, and the reserved names; stored records
	// keep theirs (ValidateName still accepts them).
	for _, tt := range []struct {
		name string
		ok   bool
	}{{"web", true}, {"root", false}, {"ubuntu", false}, {"ec2-user", false}, {"config", false}, {"connect", false}, {"roots", true}, {"Web", false}} {
		if err := ValidateNewName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidateNewName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if !tt.ok && tt.name != "Web" && ValidateName(tt.name) != nil {
			t.Errorf("ValidateName(%q) refuses a reserved name: stored records would not load", tt.name)
		}
	}
	for _, tt := range []struct {
		user string
		ok   bool
	}{{"root", true}, {"_apt", true}, {"alice-2", true}, {"2alice", false}, {"Alice", false}, {"a@b", false}} {
		if err := ValidateLoginUser(tt.user); (err == nil) != tt.ok {
			t.Errorf("ValidateLoginUser(%q) = %v, want ok=%v", tt.user, err, tt.ok)
		}
	}
}

func TestTaskIDs(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	for i := 0; i < 20000; i++ {
		id := NewTaskID()
		if !IsTaskID(id) {
			t.Fatalf("NewTaskID() = %q: not 19 digits", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %s after %d", id, i)
		}
		if id <= prev {
			t.Fatalf("ids not increasing: %s after %s", id, prev)
		}
		seen[id], prev = true, id
	}
	// A clock that goes back never produces a smaller id.
	s := newSnowflake()
	now := time.Now()
	a := s.next(now)
	b := s.next(now.Add(-time.Hour))
	if b <= a {
		t.Fatalf("clock went back: %s then %s", a, b)
	}
}
