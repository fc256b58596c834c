package docker

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	gossh "golang.org/x/crypto/ssh"

	"github.com/kohakuriver/kohakuriver/agent/netns"
)

// testNamespaceTarget checks SSHTarget on a running VPS: the container's
// own namespace is its sandbox key, and an SSH login through a connection
// dialled inside it shows the sshd a loopback peer (SSH_CONNECTION), so the
// bytes never crossed the bridge. Entering a namespace needs root.
func testNamespaceTarget(t *testing.T, rt *Runtime, id string, c container.InspectResponse, signer gossh.Signer, hostKey string) {
	st, err := rt.SSHTarget(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	own, _ := networkSSHAddr(c)
	if st.Addr != own || st.Namespace != c.NetworkSettings.SandboxKey || st.Namespace == "" || st.NamespaceAddr != "127.0.0.1:22" {
		t.Fatalf("SSHTarget = %+v; want %s, namespace %q at 127.0.0.1:22", st, own, c.NetworkSettings.SandboxKey)
	}
	if os.Geteuid() != 0 {
		skipOrFatal(t, "entering a container's network namespace needs root")
	}
	nc, err := netns.Dial(t.Context(), &net.Dialer{Timeout: 10 * time.Second}, st.Namespace, "tcp", st.NamespaceAddr)
	if err != nil {
		t.Fatalf("dial in the namespace: %v", err)
	}
	algo, _, _ := strings.Cut(hostKey, " ")
	cc, chans, reqs, err := gossh.NewClientConn(nc, st.NamespaceAddr, &gossh.ClientConfig{
		User:              "root",
		Auth:              []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyAlgorithms: []string{algo},
		HostKeyCallback: func(_ string, _ net.Addr, k gossh.PublicKey) error {
			if got := authorizedKey(k); got != hostKey {
				t.Errorf("host key %s; want the VPS's %s", got, hostKey)
			}
			return nil
		},
		Timeout: 10 * time.Second,
	})
	if err != nil {
		nc.Close()
		t.Fatalf("SSH over the namespace dial: %v", err)
	}
	client := gossh.NewClient(cc, chans, reqs)
	defer client.Close()
	// "client_ip client_port server_ip server_port", as the sshd saw it.
	got := strings.Fields(run(t, client, "echo $SSH_CONNECTION"))
	if len(got) != 4 || got[0] != "127.0.0.1" || got[2] != "127.0.0.1" || got[3] != "22" {
		t.Fatalf("SSH_CONNECTION %q; want a loopback connection to port 22", got)
	}
}
