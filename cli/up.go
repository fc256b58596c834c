package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/agent"
	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/gateway"
	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/gateway/host"
	"github.com/kohakuriver/kohakuriver/store"
)

// UpCmd runs the whole cluster on this machine: host, one agent and a demo
// VPS, all on loopback.
type UpCmd struct {
	DataDir string `name:"data-dir" default:".kohakuriver" help:"Directory for the state database and token files."`
	Name    string `name:"name" default:"demo" help:"Name of the demo VPS."`
	Image   string `name:"image" default:"kohakuriver/vps:latest" help:"Image of the demo VPS."`
	LogFlags
}

const (
	upAPIAddr   = "127.0.0.1:8000"
	upAgentAddr = "127.0.0.1:8001"
	upSSHAddr   = "127.0.0.1:8002"
)

// Run starts everything and blocks until Ctrl-C.
func (c *UpCmd) Run(env *Env) error {
	prepareHostRuntime(env)
	ctx, stop := signalContext()
	defer stop()
	log := c.logger()

	rt, err := docker.New(docker.Options{NodeName: "local", Logger: log})
	if err != nil {
		return fmt.Errorf("%w\n  kohakuriver up runs VPSs with Docker: start dockerd (systemctl start docker) and try again", err)
	}
	defer rt.Close()
	if err := ensureImage(ctx, c.Image); err != nil {
		return err
	}

	h, err := host.New(host.Config{
		DataDir: c.DataDir, APIAddr: upAPIAddr, SSHAddr: upSSHAddr, PortHost: "127.0.0.1",
		PublicHost: "127.0.0.1", DefaultImage: c.Image, Logger: log,
	})
	if err != nil {
		return err
	}
	if err := h.Start(); err != nil {
		h.Close()
		return fmt.Errorf("%w (is another kohakuriver running?)", err)
	}
	defer h.Shutdown(context.Background(), 5*time.Second)

	ag, err := agent.New(agent.Config{
		Name: "local", ListenAddr: upAgentAddr, HostURL: "http://" + upAPIAddr,
		ClusterToken: h.ClusterToken, Runtime: rt, Logger: log, RelaySocket: defaultRelaySocket("local"),
	})
	if err != nil {
		return err
	}
	agentDone := make(chan error, 1)
	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer func() { stopAgent(); <-agentDone }()
	go func() { agentDone <- ag.Run(agentCtx) }()

	progress("waiting for the agent to register")
	if err := waitNode(ctx, h.Store(), "local"); err != nil {
		return err
	}
	token, err := os.ReadFile(filepath.Join(c.DataDir, host.AdminTokenFile))
	if err != nil {
		return fmt.Errorf("read admin token: %w", err)
	}
	client := api.NewClient("http://"+upAPIAddr, strings.TrimSpace(string(token)), nil)
	v, keyPath, err := c.ensureDemo(ctx, client)
	if err != nil {
		return err
	}
	known := filepath.Join(c.DataDir, "known_hosts")
	if err := writeKnownHosts(known, h.HostKeys, "127.0.0.1", 8002, v.SSHPort); err != nil {
		return err
	}
	identity := ""
	if keyPath != "" {
		identity = " -i " + keyPath
	}
	fmt.Printf("\nVPS %s (task %s) is running. Connect with:\n\n", v.Ref(), v.TaskID)
	fmt.Printf("  ssh -o UserKnownHostsFile=%s%s -p 8002 %s@127.0.0.1\n", known, identity, v.Ref())
	fmt.Printf("  ssh -o UserKnownHostsFile=%s%s -p %d root@127.0.0.1\n\n", known, identity, v.SSHPort)
	fmt.Printf("Admin token: %s/%s. Press Ctrl-C to stop (the VPS keeps its disk).\n", c.DataDir, host.AdminTokenFile)
	<-ctx.Done()
	fmt.Println("\nstopping")
	return nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "==> "+format+"\n", args...)
}

// ensureImage builds the demo image with the repository's script when the
// engine does not have it.
func ensureImage(ctx context.Context, image string) error {
	if exec.CommandContext(ctx, "docker", "image", "inspect", image).Run() == nil {
		return nil
	}
	script := filepath.Join("testdata", "vpsimage", "build.sh")
	if _, err := os.Stat(script); err != nil {
		return fmt.Errorf("image %s is missing: build it from the kohakuriver repository with `sudo bash testdata/vpsimage/build.sh`", image)
	}
	progress("building the VPS image %s (about a minute; needs root and debootstrap)", image)
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building %s failed: %w (run `sudo bash %s` to see why; it needs root, debootstrap and Docker)", image, err, script)
	}
	return nil
}

func waitNode(ctx context.Context, st store.Store, name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n, err := st.Node(ctx, name); err == nil && n.Status == store.NodeOnline {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the agent did not register within 30s; see the log above")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ensureDemo reuses the demo VPS (starting it if stopped) or creates it with
// the user's public keys, generating a key pair when there is none.
func (c *UpCmd) ensureDemo(ctx context.Context, client *api.Client) (store.VPS, string, error) {
	keyPath := ""
	if v, err := client.GetVPS(ctx, c.Name); err == nil {
		if p := demoKeyPath(); fileExists(p) {
			keyPath = p
		}
		if v.Status != store.StatusRunning {
			progress("starting VPS %s", c.Name)
			if v, err = client.StartVPS(ctx, c.Name); err != nil {
				return v, "", err
			}
		}
		return v, keyPath, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return store.VPS{}, "", err
	}
	found, err := findPublicKeys(home)
	if err != nil {
		return store.VPS{}, "", err
	}
	var keys []string
	for _, k := range found {
		keys = append(keys, k.Line)
	}
	if len(keys) == 0 {
		keyPath = demoKeyPath()
		line, err := generateKeyPair(keyPath, "")
		if err != nil {
			return store.VPS{}, "", err
		}
		progress("no ~/.ssh/id_*.pub found: generated %s", keyPath)
		keys = []string{line}
	}
	progress("creating VPS %s", c.Name)
	v, err := client.CreateVPS(ctx, api.CreateVPSRequest{Name: c.Name, Image: c.Image, KeyMode: store.KeyModeUpload, PublicKeys: keys})
	return v, keyPath, err
}

func demoKeyPath() string {
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".ssh", "kohakuriver_demo")
}

// writeKnownHosts pins the gateway's host keys for its main port and the
// VPS port.
func writeKnownHosts(path string, keys []gossh.PublicKey, hostname string, ports ...int) error {
	var lines []string
	for _, p := range ports {
		if p == 0 {
			continue
		}
		lines = append(lines, gateway.KnownHostsLines(keys, fmt.Sprintf("[%s]:%d", hostname, p))...)
	}
	return os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}
