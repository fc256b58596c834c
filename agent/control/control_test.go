package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/agent/docker"
	"github.com/kohakuriver/kohakuriver/gateway/api"
	"github.com/kohakuriver/kohakuriver/store"
)

// fakeRuntime records calls and returns canned results.
type fakeRuntime struct {
	mu      sync.Mutex
	created []docker.Spec
	keys    map[string][]string
	err     error
}

var _ Runtime = (*fakeRuntime)(nil)

func (f *fakeRuntime) Create(_ context.Context, spec docker.Spec) (docker.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return docker.Info{}, f.err
	}
	f.created = append(f.created, spec)
	return docker.Info{TaskID: spec.TaskID, State: docker.StateRunning, HostKeys: []string{"ssh-ed25519 AAAAhost"}}, nil
}
func (f *fakeRuntime) Start(_ context.Context, id string) (docker.Info, error) {
	return docker.Info{TaskID: id, State: docker.StateRunning}, f.err
}
func (f *fakeRuntime) Stop(context.Context, string) error { return f.err }
func (f *fakeRuntime) Restart(_ context.Context, id string) (docker.Info, error) {
	return docker.Info{TaskID: id, State: docker.StateRunning}, f.err
}
func (f *fakeRuntime) Remove(context.Context, string) error { return f.err }
func (f *fakeRuntime) SetAuthorizedKeys(_ context.Context, id, user string, lines []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.keys == nil {
		f.keys = map[string][]string{}
	}
	f.keys[id+"/"+user] = lines
	return f.err
}
func (f *fakeRuntime) Exec(_ context.Context, _ string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if f.err != nil {
		return -1, f.err
	}
	in, _ := io.ReadAll(stdin)
	fmt.Fprintf(stdout, "out:%s:%s", strings.Join(cmd, " "), in)
	fmt.Fprint(stderr, "err")
	return 3, nil
}
func (f *fakeRuntime) List(context.Context) ([]docker.Info, error)     { return nil, f.err }
func (f *fakeRuntime) SSHAddr(context.Context, string) (string, error) { return "", f.err }

const token = "0123456789abcdef0123456789abcdef"

func newPair(t *testing.T, rt *fakeRuntime) (*Client, store.Node) {
	t.Helper()
	v, err := clusterauth.NewVerifier(token)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewHandler(v, rt, "n1", nil))
	t.Cleanup(srv.Close)
	return NewClient(token), store.Node{Name: "n1", Address: strings.TrimPrefix(srv.URL, "http://")}
}

func TestControlRoundTrip(t *testing.T) {
	rt := &fakeRuntime{}
	c, node := newPair(t, rt)
	ctx := context.Background()
	id := store.NewTaskID()

	st, err := c.CreateVPS(ctx, node, api.VPSSpec{TaskID: id, Image: "img", LoginUser: "root", Cores: 2, AuthorizedKeys: []string{"k1", "cert-authority ca"}})
	if err != nil || !st.Running || st.TaskID != id || len(st.HostKeys) != 1 {
		t.Fatalf("create: %+v %v", st, err)
	}
	if got := rt.created[0]; got.Image != "img" || got.Cores != 2 || len(got.AuthorizedKeys) != 2 {
		t.Fatalf("runtime got spec %+v", got)
	}
	if err := c.SetKeys(ctx, node, id, "root", []string{"k2"}); err != nil || rt.keys[id+"/root"][0] != "k2" {
		t.Fatalf("set keys: %v %v", err, rt.keys)
	}
	var out, errb bytes.Buffer
	code, err := c.Exec(ctx, node, id, []string{"echo", "hi"}, strings.NewReader("in"), &out, &errb)
	if err != nil || code != 3 || out.String() != "out:echo hi:in" || errb.String() != "err" {
		t.Fatalf("exec: code %d err %v out %q stderr %q", code, err, out.String(), errb.String())
	}
	for name, call := range map[string]func() error{
		"stop":    func() error { return c.StopVPS(ctx, node, id) },
		"delete":  func() error { return c.DeleteVPS(ctx, node, id) },
		"start":   func() error { _, err := c.StartVPS(ctx, node, id); return err },
		"restart": func() error { _, err := c.RestartVPS(ctx, node, id); return err },
	} {
		if err := call(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestControlErrors(t *testing.T) {
	tests := []struct {
		name       string
		runtimeErr error
		wantStatus int
	}{
		{"missing image", fmt.Errorf("%w: kohakuriver/vps:x", docker.ErrImageNotFound), 422},
		{"no container", docker.ErrNotFound, 404},
		{"not running", docker.ErrNotRunning, 409},
		{"engine down", docker.ErrUnreachable, 503},
		{"other", errors.New("boom"), 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, node := newPair(t, &fakeRuntime{err: tt.runtimeErr})
			_, err := c.CreateVPS(context.Background(), node, api.VPSSpec{TaskID: store.NewTaskID()})
			var ce *Error
			if !errors.As(err, &ce) || ce.Status != tt.wantStatus || !strings.Contains(ce.Message, tt.runtimeErr.Error()) {
				t.Fatalf("err = %v, want status %d carrying the runtime's message", err, tt.wantStatus)
			}
		})
	}
	t.Run("wrong token", func(t *testing.T) {
		_, node := newPair(t, &fakeRuntime{})
		bad := NewClient("ffffffffffffffffffffffffffffffff")
		err := bad.StopVPS(context.Background(), node, store.NewTaskID())
		var ce *Error
		if !errors.As(err, &ce) || ce.Status != 401 {
			t.Fatalf("err = %v, want 401", err)
		}
	})
	t.Run("bad task id", func(t *testing.T) {
		c, node := newPair(t, &fakeRuntime{})
		err := c.StopVPS(context.Background(), node, "123")
		var ce *Error
		if !errors.As(err, &ce) || ce.Status != 400 {
			t.Fatalf("err = %v, want 400", err)
		}
	})
}

// TestCreateForAnotherNodeRefused: a create addressed to another node (a
// signed request replayed to this agent, or an address that now belongs
// to another node) creates nothing here.
func TestCreateForAnotherNodeRefused(t *testing.T) {
	rt := &fakeRuntime{}
	c, node := newPair(t, rt) // the agent is "n1"
	other := node
	other.Name = "n2"
	_, err := c.CreateVPS(context.Background(), other, api.VPSSpec{TaskID: store.NewTaskID(), Image: "img", LoginUser: "root"})
	if err == nil || !strings.Contains(err.Error(), `this create is for node "n2"; this agent is node "n1"`) {
		t.Fatalf("create for n2 at n1: %v, want the refusal naming both", err)
	}
	if len(rt.created) != 0 {
		t.Fatalf("the runtime created %d containers for another node", len(rt.created))
	}
	if _, err := c.CreateVPS(context.Background(), node, api.VPSSpec{TaskID: store.NewTaskID(), Image: "img", LoginUser: "root"}); err != nil {
		t.Fatalf("create for n1 at n1: %v", err)
	}
}
