package host

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/kohakuriver/kohakuriver/store"
)

// TestVPSLifecycleOverSSH: create through the API, log in by name and by
// port with the real ssh client, keep data over a restart, explain a stop,
// and forget everything on delete.
func TestVPSLifecycleOverSSH(t *testing.T) {
	n1 := nodeName(t, "n1")
	c := newCluster(t, n1)
	alice := c.userClient("alice")
	key := newUserKey(t)
	v := c.createVPS(alice, n1, "life", key)
	ctx := context.Background()

	if !store.IsTaskID(v.TaskID) || v.Status != store.StatusRunning || len(v.HostKeys) == 0 || v.SSHPort != c.portBase {
		t.Fatalf("created VPS = %+v", v)
	}
	// Username route and port route reach the same container.
	var hostname bytes.Buffer
	if code, err := alice.Exec(ctx, v.TaskID, []string{"cat", "/etc/hostname"}, nil, &hostname, nil); err != nil || code != 0 {
		t.Fatalf("exec: %d %v", code, err)
	}
	for _, route := range []struct {
		port int
		user string
	}{{0, v.TaskID}, {0, "root@life"}, {v.SSHPort, "root"}} {
		out, errOut, code := c.ssh(key, route.port, route.user, "", "hostname")
		if code != 0 || out != hostname.String() {
			t.Fatalf("ssh %s (port %d): %d %q %q; want hostname %q", route.user, route.port, code, out, errOut, hostname.String())
		}
	}
	// A file survives a restart; the host key stays the pinned one.
	if _, errOut, code := c.ssh(key, 0, "life", "persist me\n", "cat > /root/keep.txt"); code != 0 {
		t.Fatalf("write: %d %s", code, errOut)
	}
	if _, err := alice.RestartVPS(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := c.ssh(key, 0, "life", "", "cat /root/keep.txt")
	if code != 0 || out != "persist me\n" {
		t.Fatalf("after restart: %d %q %q", code, out, errOut)
	}
	after, _ := c.host.Store().VPS(ctx, v.TaskID)
	if strings.Join(after.HostKeys, ",") != strings.Join(v.HostKeys, ",") || after.SSHPort != v.SSHPort {
		t.Fatalf("restart changed host keys or port: %+v", after)
	}

	// Stopped: the user is told, not disconnected silently; the port closes.
	if _, err := alice.StopVPS(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = c.ssh(key, 0, "life", "", "true")
	if code != 255 || !strings.Contains(errOut, "VPS life is stopped") {
		t.Fatalf("stopped: %d %q", code, errOut)
	}
	waitFor(t, "port listener to close", func() bool { return !c.host.Gateway().PortListening(v.SSHPort) })
	if _, err := alice.StartVPS(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "port listener to reopen", func() bool { return c.host.Gateway().PortListening(v.SSHPort) })
	if out, errOut, code := c.ssh(key, v.SSHPort, "root", "", "cat /root/keep.txt"); code != 0 || out != "persist me\n" {
		t.Fatalf("after start: %d %q %q", code, out, errOut)
	}

	// Delete: container, record and port are gone.
	if err := alice.DeleteVPS(ctx, "life", false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.host.Store().VPS(ctx, v.TaskID); err == nil {
		t.Fatal("record still there after delete")
	}
	if _, err := c.agents[n1].rt.Inspect(ctx, v.TaskID); err == nil {
		t.Fatal("container still there after delete")
	}
	waitFor(t, "port listener to close after delete", func() bool { return !c.host.Gateway().PortListening(v.SSHPort) })
	if _, errOut, code := c.ssh(key, 0, "life", "", "true"); code == 0 || !strings.Contains(errOut, `"life" names none it opens`) {
		t.Fatalf("after delete: %d %q", code, errOut)
	}
}

// TestKeysChangeAtOnce: a key added through the API works for the next
// login, a removed one stops working for the next login.
func TestKeysChangeAtOnce(t *testing.T) {
	n1 := nodeName(t, "n1")
	c := newCluster(t, n1)
	bob := c.userClient("bob")
	k1, k2 := newUserKey(t), newUserKey(t)
	v := c.createVPS(bob, n1, "keys", k1)
	ctx := context.Background()

	if _, _, code := c.ssh(k2, 0, "keys", "", "true"); code == 0 {
		t.Fatal("k2 worked before it was added")
	}
	if _, err := bob.AddKeys(ctx, "keys", []string{k2.line}); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := c.ssh(k2, v.SSHPort, "root", "", "true"); code != 0 {
		t.Fatalf("k2 after add: %d %s", code, errOut)
	}
	// The VPS's own authorized_keys follows too.
	var ak bytes.Buffer
	if _, err := bob.Exec(ctx, "keys", []string{"cat", "/root/.ssh/authorized_keys"}, nil, &ak, nil); err != nil {
		t.Fatal(err)
	}
	// ...with the gateway's two credentials: the CA for its certificates
	// and this VPS's plain hop key (for sshds without certificates).
	if !strings.Contains(ak.String(), strings.Fields(k2.line)[1]) || !strings.Contains(ak.String(), "cert-authority") ||
		strings.Count(ak.String(), " kohakuriver-gateway-hop\n") != 1 {
		t.Fatalf("authorized_keys in the VPS:\n%s", ak.String())
	}
	if _, err := bob.RemoveKey(ctx, "keys", k1.fp); err != nil {
		t.Fatal(err)
	}
	if _, _, code := c.ssh(k1, 0, "keys", "", "true"); code == 0 {
		t.Fatal("k1 still works after removal")
	}
	if _, _, code := c.ssh(k2, 0, "keys", "", "true"); code != 0 {
		t.Fatal("k2 stopped working")
	}
}
