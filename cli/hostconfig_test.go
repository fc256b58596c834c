package cli

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadHostConfig(t *testing.T) {
	tests := []struct {
		name     string
		json     string
		errMatch string
		check    func(t *testing.T)
	}{
		{name: "full", json: `{"log_level":"debug","max_channels":10,"max_forwards":3,"throttle":{"max_failures":5,"window":"30s","ban":"2m","allow":["10.0.0.0/8"]}}`},
		{name: "empty object", json: `{}`},
		{name: "unknown field", json: `{"max_chanels":1}`, errMatch: "unknown field"},
		{name: "bad duration", json: `{"throttle":{"ban":"five"}}`, errMatch: "throttle.ban"},
		{name: "bad prefix", json: `{"throttle":{"allow":["10.0.0.1"]}}`, errMatch: "CIDR"},
		{name: "bad level", json: `{"log_level":"loud"}`, errMatch: "log_level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "host.json")
			_ = os.WriteFile(path, []byte(tt.json), 0o600)
			l, lvl, err := loadHostConfig(path)
			if tt.errMatch != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errMatch) {
					t.Fatalf("err = %v, want %q", err, tt.errMatch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.name == "full" {
				if l.MaxChannels != 10 || l.MaxForwards != 3 || l.Throttle.MaxFailures != 5 || l.Throttle.Window != 30*time.Second ||
					l.Throttle.Ban != 2*time.Minute || len(l.Throttle.Allow) != 1 || lvl == nil || *lvl != slog.LevelDebug {
					t.Fatalf("parsed %+v level %v", l, lvl)
				}
			}
		})
	}
}

// TestHostSSHPort: --gateway-port (HOST_SSH_PROXY_PORT) replaces the port of
// --ssh-addr and keeps its host; bad values say what to give.
func TestHostSSHPort(t *testing.T) {
	for _, tt := range []struct {
		addr    string
		port    int
		want    string
		wantErr string
	}{
		{addr: ":8002", want: ":8002"},
		{addr: ":8002", port: 2222, want: ":2222"},
		{addr: "127.0.0.1:8002", port: 2222, want: "127.0.0.1:2222"},
		{addr: "[::1]:8002", port: 2222, want: "[::1]:2222"},
		{addr: ":8002", port: 70000, wantErr: "give a port from 1 to 65535"},
		{addr: "no-port", port: 2222, wantErr: "give HOST:PORT or :PORT"},
	} {
		got, err := HostFlags{SSHAddr: tt.addr, SSHPort: tt.port}.sshAddr()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q + %d: err %v, want %q", tt.addr, tt.port, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q + %d = %q, %v; want %q", tt.addr, tt.port, got, err, tt.want)
		}
	}
}
