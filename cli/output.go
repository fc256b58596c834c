package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Output is where a command prints its result, in the --format chosen.
type Output struct {
	W io.Writer
	// JSON is set by --format json: print the API's objects as indented
	// JSON, nothing else on stdout.
	JSON bool
}

// json prints v as indented JSON.
func (o *Output) json(v any) error {
	enc := json.NewEncoder(o.W)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table is a text table with aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	t.row(headers...)
	return t
}

// row adds one line; empty cells show as "-".
func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		// A tab or newline in a cell would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cells[i])
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// fields prints "key: value" lines with aligned values.
func fields(w io.Writer, kv ...string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for i := 0; i+1 < len(kv); i += 2 {
		v := kv[i+1]
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", kv[i], v)
	}
	return tw.Flush()
}

// ago formats the time since t as "3s ago", "5m ago", "2h ago", "4d ago".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
}

// formatMemory shows megabytes as "512M" or "2G"; 0 is "-" (no limit).
func formatMemory(mb int64) string {
	switch {
	case mb == 0:
		return ""
	case mb%(1<<20) == 0:
		return strconv.FormatInt(mb>>20, 10) + "T"
	case mb%(1<<10) == 0:
		return strconv.FormatInt(mb>>10, 10) + "G"
	}
	return strconv.FormatInt(mb, 10) + "M"
}

// memoryRE is a size: a number, an optional unit, an optional "iB" or "B".
var memoryRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGT])I?B?)?$`)

// parseMemory reads a size such as 512M, 2G, 1.5G or 2048 (megabytes) and
// returns it in megabytes (binary units: 1G = 1024M).
func parseMemory(s string) (int64, error) {
	m := memoryRE.FindStringSubmatch(strings.ToUpper(strings.TrimSpace(s)))
	if m == nil {
		return 0, fmt.Errorf("--memory %q: give a size such as 512M or 2G", s)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil || v > 1<<40 {
		return 0, fmt.Errorf("--memory %q: give a size such as 512M or 2G", s)
	}
	switch m[2] {
	case "K":
		v /= 1024
	case "G":
		v *= 1024
	case "T":
		v *= 1024 * 1024
	}
	if v < 1 {
		return 0, fmt.Errorf("--memory %q: the smallest limit is 1M", s)
	}
	return int64(v), nil
}

// shellQuote quotes s for a POSIX shell when it needs quoting, so that a
// printed command can be pasted as is.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./-_~", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
