package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/kohakuriver/kohakuriver/gateway"
)

// hostConfigFile is the part of the host's configuration that a SIGHUP
// reloads without dropping sessions. Example:
//
//	{"log_level": "info", "max_channels": 256, "max_forwards": 64,
//	 "throttle": {"max_failures": 20, "window": "1m", "ban": "5m", "allow": ["10.0.0.0/8"]}}
type hostConfigFile struct {
	LogLevel    string `json:"log_level"`
	MaxChannels int    `json:"max_channels"`
	MaxForwards int    `json:"max_forwards"`
	Throttle    struct {
		MaxFailures int      `json:"max_failures"`
		Window      string   `json:"window"`
		Ban         string   `json:"ban"`
		Allow       []string `json:"allow"`
	} `json:"throttle"`
}

// loadHostConfig reads and validates the file; on error nothing applies.
func loadHostConfig(path string) (gateway.Limits, *slog.Level, error) {
	var l gateway.Limits
	b, err := os.ReadFile(path)
	if err != nil {
		return l, nil, err
	}
	var f hostConfigFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return l, nil, fmt.Errorf("%s: %w", path, err)
	}
	l.MaxChannels, l.MaxForwards = f.MaxChannels, f.MaxForwards
	l.Throttle.MaxFailures = f.Throttle.MaxFailures
	for name, d := range map[string]struct {
		text string
		dst  *time.Duration
	}{"throttle.window": {f.Throttle.Window, &l.Throttle.Window}, "throttle.ban": {f.Throttle.Ban, &l.Throttle.Ban}} {
		if d.text == "" {
			continue
		}
		if *d.dst, err = time.ParseDuration(d.text); err != nil {
			return l, nil, fmt.Errorf("%s: %s: %w (write e.g. \"90s\" or \"5m\")", path, name, err)
		}
	}
	for _, a := range f.Throttle.Allow {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return l, nil, fmt.Errorf("%s: throttle.allow: %w (write CIDR prefixes such as \"10.0.0.0/8\")", path, err)
		}
		l.Throttle.Allow = append(l.Throttle.Allow, p)
	}
	var lvl *slog.Level
	if f.LogLevel != "" {
		lvl = new(slog.Level)
		if err := lvl.UnmarshalText([]byte(f.LogLevel)); err != nil {
			return l, nil, fmt.Errorf("%s: log_level: %w", path, err)
		}
	}
	return l, lvl, nil
}
