package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/kohakuriver/kohakuriver/store"
)

// VPSKeysCmd groups the key commands; `vps keys <task_id>` lists.
type VPSKeysCmd struct {
	List   VPSKeysListCmd   `cmd:"" default:"withargs" aliases:"ls" help:"List the keys that may log in (the default)."`
	Add    VPSKeysAddCmd    `cmd:"" help:"Authorize more public keys."`
	Remove VPSKeysRemoveCmd `cmd:"" aliases:"rm" help:"Revoke a key by fingerprint or .pub file; it takes effect at the next login."`
}

// Help is the detailed help.
func (VPSKeysCmd) Help() string {
	return `Examples:
  kohakuriver vps keys web
  kohakuriver vps keys add web --public-key-file ~/.ssh/id_ed25519.pub
  kohakuriver vps keys add web --public-key-string "ssh-ed25519 AAAA... colleague"
  kohakuriver vps keys remove web SHA256:3b1k...
  kohakuriver vps keys remove web ~/.ssh/old_key.pub`
}

// VPSKeysListCmd lists a VPS's keys.
type VPSKeysListCmd struct{ vpsRef }

// Run lists the keys.
func (c *VPSKeysListCmd) Run(ctx context.Context, out *Output, cl *Cluster) error {
	keys, err := cl.API.Keys(ctx, c.Ref)
	if err != nil {
		return err
	}
	return printKeys(out, keys)
}

// VPSKeysAddCmd adds keys.
type VPSKeysAddCmd struct {
	vpsRef
	PublicKeyFile   []string `name:"public-key-file" placeholder:"PATH" predictor:"file" help:"A .pub file (or authorized_keys lines) to authorize; repeatable."`
	PublicKeyString []string `name:"public-key-string" placeholder:"KEY" help:"A public key to authorize (\"ssh-ed25519 AAAA... comment\"); repeatable."`
}

// Run validates the keys locally, then adds them.
func (c *VPSKeysAddCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	var lines []string
	for _, s := range c.PublicKeyString {
		k, err := store.ParseAuthorizedKey(s)
		if err != nil {
			return fmt.Errorf("--public-key-string: %s", userMessage(err))
		}
		lines = append(lines, k.Line)
	}
	for _, p := range c.PublicKeyFile {
		l, err := readPublicKeyFile(env.expand(p))
		if err != nil {
			return fmt.Errorf("--public-key-file: %w", err)
		}
		lines = append(lines, l...)
	}
	if len(lines) == 0 {
		return errors.New("no key given: pass --public-key-file PATH or --public-key-string KEY")
	}
	v, err := cl.API.GetVPS(ctx, c.Ref)
	if err != nil {
		return err
	}
	if v.KeyMode == store.KeyModeNone {
		// The gateway relays such a VPS's own login and takes no keys
		// for it (gateway/auth.go, admit).
		fmt.Fprintf(env.Stderr, "kohakuriver: warning: VPS %s was created with --no-ssh-key; the gateway does not accept keys for it, so these keys will not open it\n", v.Ref())
	}
	keys, err := cl.API.AddKeys(ctx, c.Ref, lines)
	if err != nil {
		return fmt.Errorf("add keys to VPS %s: %w", c.Ref, err)
	}
	return printKeys(out, keys)
}

// VPSKeysRemoveCmd removes a key.
type VPSKeysRemoveCmd struct {
	vpsRef
	Key string `arg:"" name:"key" predictor:"file" help:"The key's fingerprint (SHA256:...) or a .pub file holding it."`
}

// Run removes the key (every key of a .pub file).
func (c *VPSKeysRemoveCmd) Run(ctx context.Context, env *Env, out *Output, cl *Cluster) error {
	var fps []string
	if strings.HasPrefix(c.Key, "SHA256:") {
		fps = []string{c.Key}
	} else {
		path := env.expand(c.Key)
		if !fileExists(path) {
			return fmt.Errorf("%q is neither a fingerprint (SHA256:..., see `kohakuriver vps keys %s`) nor a .pub file", c.Key, c.Ref)
		}
		lines, err := readPublicKeyFile(path)
		if err != nil {
			return err
		}
		for _, l := range lines {
			k, _ := store.ParseAuthorizedKey(l) // parsed by readPublicKeyFile
			fps = append(fps, k.Fingerprint)
		}
	}
	var keys []store.AuthorizedKey
	for _, fp := range fps {
		var err error
		if keys, err = cl.API.RemoveKey(ctx, c.Ref, fp); err != nil {
			return fmt.Errorf("remove key %s: %w", fp, err)
		}
	}
	return printKeys(out, keys)
}

// printKeys shows a VPS's keys after a change or on request.
func printKeys(out *Output, keys []store.AuthorizedKey) error {
	if out.JSON {
		if keys == nil {
			keys = []store.AuthorizedKey{}
		}
		return out.json(keys)
	}
	t := newTable(out.W, "FINGERPRINT", "TYPE", "COMMENT")
	for _, k := range keys {
		typ, comment, _ := strings.Cut(keyComment(k.Line), " ")
		t.row(k.Fingerprint, typ, comment)
	}
	return t.flush()
}

// keyComment is an authorized_keys line without its base64 blob:
// "TYPE [COMMENT]".
func keyComment(line string) string {
	f := strings.SplitN(line, " ", 3)
	if len(f) < 3 {
		return f[0]
	}
	return f[0] + " " + f[2]
}
