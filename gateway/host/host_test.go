package host

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/gateway"
)

func startHost(t *testing.T, dir string) *Host {
	t.Helper()
	h, err := New(Config{DataDir: dir, APIAddr: "127.0.0.1:0", SSHAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		PortHost: "127.0.0.1", PortMin: 45000, PortMax: 45009})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		h.Close()
		t.Fatal(err)
	}
	return h
}

// TestIdentitySurvivesRestart: the gateway's host keys and the cluster
// token are made once; a restarted host shows the same keys, so the real
// ssh client's known_hosts from before still verifies it.
func TestIdentitySurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	h1 := startHost(t, dir)
	keys1, token1 := h1.HostKeys, h1.ClusterToken
	h1.Close()

	h2 := startHost(t, dir)
	defer h2.Close()
	if len(h2.HostKeys) != 3 || h2.ClusterToken != token1 {
		t.Fatalf("restart changed identity: %d host keys, token same=%v", len(h2.HostKeys), h2.ClusterToken == token1)
	}
	for i := range keys1 {
		if string(keys1[i].Marshal()) != string(h2.HostKeys[i].Marshal()) {
			t.Fatalf("host key %d changed across restart", i)
		}
	}
	for _, f := range []string{AdminTokenFile, ClusterTokenFile, StoreFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %v, want 0600", f, err, st.Mode().Perm())
		}
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("no ssh client")
	}
	// known_hosts written from the first run's keys.
	port := h2.SSHAddr().(*net.TCPAddr).Port
	known := filepath.Join(t.TempDir(), "known_hosts")
	lines := gateway.KnownHostsLines(keys1, fmt.Sprintf("[127.0.0.1]:%d", port))
	if err := os.WriteFile(known, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile="+known, "-o", "PubkeyAuthentication=no", "-p", strconv.Itoa(port),
		"nobody@127.0.0.1", "true").CombinedOutput()
	if strings.Contains(string(out), "verification failed") || !strings.Contains(string(out), "Permission denied") {
		t.Fatalf("ssh against the restarted gateway: %s", out)
	}
}

func TestAdminEndpoints(t *testing.T) {
	h := startHost(t, t.TempDir())
	defer h.Close()
	base := "http://" + h.AdminAddr().String()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	// One refused SSH connection shows up in the metrics.
	c, err := net.Dial("tcp", h.SSHAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("not ssh\r\n"))
	_ = c.(*net.TCPConn).CloseWrite()
	_, _ = io.ReadAll(c)
	c.Close()
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`kohakuriver_gateway_connections_total{listener="main"} 1`,
		`kohakuriver_nodes{status="online"} 0`,
		"kohakuriver_gateway_active_connections",
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
