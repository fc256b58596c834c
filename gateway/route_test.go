package gateway

import (
	"strings"
	"testing"
	"unicode/utf8"
)

var targetTests = []struct {
	name     string
	in       string
	want     Target
	errMatch string
}{
	{name: "task id", in: "7318450236214759424", want: Target{Ref: "7318450236214759424"}},
	{name: "vps name not a login", in: "9box", want: Target{Ref: "9box"}},
	{name: "name with dash is also a login", in: "dev-box", want: Target{Ref: "dev-box", MaybeLogin: true}},
	{name: "name that is also a login", in: "devbox", want: Target{Ref: "devbox", MaybeLogin: true}},
	{name: "login at task", in: "root@7318450236214759424", want: Target{Login: "root", Ref: "7318450236214759424", Explicit: true}},
	{name: "login at name", in: "alice@dev-box", want: Target{Login: "alice", Ref: "dev-box", Explicit: true}},
	{name: "underscore login is key route only", in: "_svc", want: Target{MaybeLogin: true}},
	{name: "empty", in: "", errMatch: "empty user name"},
	{name: "two ats", in: "a@b@c", errMatch: "more than one '@'"},
	{name: "bad login", in: "Root@dev-box", errMatch: "not a valid user name"},
	{name: "bad task", in: "root@Dev_Box", errMatch: "not a task id or VPS name"},
	{name: "empty task", in: "root@", errMatch: "not a task id or VPS name"},
	{name: "empty login", in: "@dev-box", errMatch: "not a valid user name"},
	{name: "junk", in: "UPPER CASE", errMatch: "neither a task id"},
	{name: "too long", in: strings.Repeat("a", 200), errMatch: "longer than"},
	{name: "control chars echoed safely", in: "a\x1b[2Jb@x", errMatch: `"a?[2Jb"`},
}

func TestParseTarget(t *testing.T) {
	for _, tt := range targetTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTarget(tt.in)
			if tt.errMatch != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errMatch) {
					t.Fatalf("ParseTarget(%q) error = %v, want one containing %q", tt.in, err, tt.errMatch)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTarget(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseTarget(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// FuzzParseTarget checks the parser's invariants on arbitrary input: no
// panic, a result always names something routable, and an error message
// never carries raw control characters back to the client.
func FuzzParseTarget(f *testing.F) {
	for _, tt := range targetTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseTarget(in)
		if err != nil {
			for _, r := range err.Error() {
				if r < 0x20 || r == 0x7f {
					t.Fatalf("error for %q carries control character %U", in, r)
				}
			}
			return
		}
		if got.Ref == "" && !got.MaybeLogin {
			t.Fatalf("ParseTarget(%q) = %+v: routes nowhere", in, got)
		}
		if got.Explicit && (got.Login == "" || got.Ref == "") {
			t.Fatalf("ParseTarget(%q) = %+v: explicit without login and task", in, got)
		}
		if got.Ref != "" && !isTaskRef(got.Ref) {
			t.Fatalf("ParseTarget(%q) = %+v: bad ref", in, got)
		}
		if !utf8.ValidString(got.Ref + got.Login) {
			t.Fatalf("ParseTarget(%q) returned invalid UTF-8", in)
		}
	})
}
