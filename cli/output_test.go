package cli

import (
	"testing"
	"time"
)

func TestParseMemory(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64 // 0 = error
	}{
		{"512M", 512}, {"2G", 2048}, {"2g", 2048}, {"2GB", 2048}, {"2GiB", 2048}, {"1.5G", 1536},
		{"1T", 1 << 20}, {"2048", 2048}, {"4096K", 4},
		{"", 0}, {"lots", 0}, {"-1G", 0}, {"100B", 0}, {"1K", 0}, {"0", 0}, {"2 X", 0},
	} {
		got, err := parseMemory(tc.in)
		if tc.want == 0 {
			if err == nil {
				t.Errorf("parseMemory(%q) = %d, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseMemory(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestAgo(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{3 * time.Second, "3s ago"}, {90 * time.Second, "1m ago"}, {5 * time.Hour, "5h ago"},
		{72 * time.Hour, "3d ago"}, {-time.Second, "just now"},
	} {
		if got := ago(now, now.Add(-tc.d)); got != tc.want {
			t.Errorf("ago(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
	if got := ago(now, time.Time{}); got != "never" {
		t.Errorf("zero time: %q", got)
	}
}

func TestShellQuote(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"/home/u/.ssh/key":        "/home/u/.ssh/key",
		"/home/my user/key":       "'/home/my user/key'",
		"it's":                    `'it'\''s'`,
		"":                        "''",
		"UserKnownHostsFile=/a/b": "UserKnownHostsFile=/a/b",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestFormatMemory(t *testing.T) {
	t.Parallel()
	for mb, want := range map[int64]string{0: "", 512: "512M", 2048: "2G", 1 << 20: "1T", 1536: "1536M"} {
		if got := formatMemory(mb); got != want {
			t.Errorf("formatMemory(%d) = %q, want %q", mb, got, want)
		}
	}
}

// FuzzParseMemory: user input never panics, and a size is always positive.
func FuzzParseMemory(f *testing.F) {
	for _, s := range []string{"512M", "2G", "1.5GiB", "2048", "", "lots", "100B", "1e9G", "99999999999999999999T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if mb, err := parseMemory(s); err == nil && mb < 1 {
			t.Fatalf("parseMemory(%q) = %d", s, mb)
		}
	})
}
