package cli

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kohakuriver/kohakuriver/store"
)

// KeyFlags are vps create's SSH key mode flags (the spec's "SSH key
// modes"). At most one mode flag may be given; none means upload.
type KeyFlags struct {
	SSH             bool   `name:"ssh" help:"Enable SSH (always on; accepted for compatibility). Alone it uploads your ~/.ssh/id_*.pub keys."`
	GenSSHKey       bool   `name:"gen-ssh-key" help:"Make a new ED25519 key pair on this machine for the VPS; the private key stays here (~/.ssh/kohakuriver_<task_id>)."`
	KeyOutFile      string `name:"key-out-file" placeholder:"PATH" predictor:"file" help:"With --gen-ssh-key: where to save the private key (the public key goes to PATH.pub)."`
	PublicKeyFile   string `name:"public-key-file" placeholder:"PATH" predictor:"file" help:"Authorize the public key(s) in this file (a .pub file or authorized_keys lines)."`
	PublicKeyString string `name:"public-key-string" placeholder:"KEY" help:"Authorize this public key (\"ssh-ed25519 AAAA... comment\")."`
	NoSSHKey        bool   `name:"no-ssh-key" help:"Authorize no key (for images with their own login method)."`
}

// keyPlan is what KeyFlags resolve to before the VPS is created.
type keyPlan struct {
	Mode  store.KeyMode
	Lines []string // authorized_keys lines to send
	// From says where the keys come from, for the user.
	From []string
	// GenPath is where --gen-ssh-key wrote the private key. Temp says it
	// is a temporary name, to be replaced by ~/.ssh/kohakuriver_<task_id>
	// once the task id is known (not so with --key-out-file).
	GenPath string
	Temp    bool
}

// modeFlags names the mode flags that are set.
func (f KeyFlags) modeFlags() []string {
	var set []string
	if f.GenSSHKey {
		set = append(set, "--gen-ssh-key")
	}
	if f.PublicKeyFile != "" {
		set = append(set, "--public-key-file")
	}
	if f.PublicKeyString != "" {
		set = append(set, "--public-key-string")
	}
	if f.NoSSHKey {
		set = append(set, "--no-ssh-key")
	}
	return set
}

// errKeyModes lists the modes, for errors that ask the user to pick one.
const errKeyModes = "--gen-ssh-key (a new key pair made on this machine), --public-key-file PATH, --public-key-string KEY, --no-ssh-key, " +
	"or none of them to upload your ~/.ssh/id_*.pub"

// check validates the flags without touching the file system: what can be
// refused before anything is read or sent.
func (f KeyFlags) check() error {
	if set := f.modeFlags(); len(set) > 1 {
		return fmt.Errorf("%s cannot be combined: choose one SSH key mode: %s", strings.Join(set, " and "), errKeyModes)
	}
	if f.KeyOutFile != "" && !f.GenSSHKey {
		return errors.New("--key-out-file names where --gen-ssh-key saves the new private key; add --gen-ssh-key or drop --key-out-file")
	}
	if strings.Contains(f.PublicKeyString, "PRIVATE KEY") {
		return errors.New("--public-key-string is a private key, which must stay on your machine; give the public key (the .pub file's line)")
	}
	if f.PublicKeyString != "" {
		if _, err := store.ParseAuthorizedKey(f.PublicKeyString); err != nil {
			return fmt.Errorf("--public-key-string: %s", userMessage(err))
		}
	}
	return nil
}

// resolve reads the keys the flags name. With --gen-ssh-key it generates
// the pair; the caller must move it into place after the VPS is created
// (finishGenerated) or remove it (removeKeyPair(plan.GenPath)) on failure.
func (f KeyFlags) resolve(env *Env, name string) (keyPlan, error) {
	if err := f.check(); err != nil {
		return keyPlan{}, err
	}
	switch {
	case f.NoSSHKey:
		return keyPlan{Mode: store.KeyModeNone, Lines: []string{}}, nil
	case f.PublicKeyString != "":
		k, _ := store.ParseAuthorizedKey(f.PublicKeyString) // checked above
		return keyPlan{Mode: store.KeyModeString, Lines: []string{k.Line}, From: []string{"--public-key-string"}}, nil
	case f.PublicKeyFile != "":
		lines, err := readPublicKeyFile(env.expand(f.PublicKeyFile))
		if err != nil {
			return keyPlan{}, fmt.Errorf("--public-key-file: %w", err)
		}
		return keyPlan{Mode: store.KeyModeFile, Lines: lines, From: []string{env.expand(f.PublicKeyFile)}}, nil
	case f.GenSSHKey:
		return f.generate(env, name)
	}
	found, err := findPublicKeys(env.Home)
	if err != nil {
		return keyPlan{}, err
	}
	if len(found) == 0 {
		return keyPlan{}, fmt.Errorf("no public key found in %s (id_*.pub): add --gen-ssh-key to make a new key pair for this VPS, "+
			"or give one with --public-key-file PATH", env.sshDir())
	}
	p := keyPlan{Mode: store.KeyModeUpload}
	for _, k := range found {
		p.Lines = append(p.Lines, k.Line)
		p.From = append(p.From, k.Path)
	}
	return p, nil
}

// generate makes the pair: at --key-out-file, or under a temporary name in
// ~/.ssh until the task id is known.
func (f KeyFlags) generate(env *Env, name string) (keyPlan, error) {
	p := keyPlan{Mode: store.KeyModeGenerated}
	if f.KeyOutFile != "" {
		p.GenPath = env.expand(f.KeyOutFile)
		if abs, err := filepath.Abs(p.GenPath); err == nil {
			p.GenPath = abs
		}
	} else {
		var b [6]byte
		_, _ = rand.Read(b[:])
		p.GenPath = filepath.Join(env.sshDir(), "kohakuriver_new_"+hex.EncodeToString(b[:]))
		p.Temp = true
	}
	comment := "kohakuriver-vps"
	if name != "" {
		comment = "kohakuriver-" + name
	}
	line, err := generateKeyPair(p.GenPath, comment)
	if err != nil {
		return keyPlan{}, fmt.Errorf("--gen-ssh-key: %w", err)
	}
	p.Lines = []string{line}
	return p, nil
}

// finishGenerated moves a pair made under a temporary name to
// ~/.ssh/kohakuriver_<taskID> and returns the private key's path. If that
// name is taken the key keeps its temporary name.
//
// A pair saved at --key-out-file stays there, and
// ~/.ssh/kohakuriver_<taskID> becomes a symbolic link to it, so that
// kohakuriver ssh and ssh config find it as they find any generated key.
// The link is only a convenience: if it cannot be made, the create output
// still names the key (--key).
func (p keyPlan) finishGenerated(env *Env, taskID string) (string, error) {
	if !p.Temp {
		if link := generatedKeyPath(env, taskID); link != p.GenPath && !fileExists(link) {
			if os.MkdirAll(filepath.Dir(link), 0o700) == nil {
				_ = os.Symlink(p.GenPath, link)
			}
		}
		return p.GenPath, nil
	}
	final := generatedKeyPath(env, taskID)
	if err := moveKeyPair(p.GenPath, final); err != nil {
		return p.GenPath, fmt.Errorf("the new private key stays at %s: %w", p.GenPath, err)
	}
	return final, nil
}

// generatedKeyPath is where --gen-ssh-key keeps a VPS's private key, and
// where kohakuriver ssh looks for it.
func generatedKeyPath(env *Env, taskID string) string {
	return filepath.Join(env.sshDir(), "kohakuriver_"+taskID)
}

// readPublicKeyFile reads authorized_keys lines from path, refusing private
// keys with a hint.
func readPublicKeyFile(path string) ([]string, error) {
	b, err := readSmallFile(path)
	if err != nil {
		return nil, err
	}
	text := string(b)
	if strings.Contains(text, "PRIVATE KEY") {
		return nil, fmt.Errorf("%s is a private key; give its public half (usually %s.pub)", path, path)
	}
	keys, err := store.ParseAuthorizedKeys(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %s", path, userMessage(err))
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s holds no public key", path)
	}
	lines := make([]string, len(keys))
	for i, k := range keys {
		lines[i] = k.Line
	}
	return lines, nil
}

// userMessage drops the store sentinel's "invalid value: " prefix, which
// says nothing to a user.
func userMessage(err error) string {
	return strings.ReplaceAll(err.Error(), store.ErrInvalid.Error()+": ", "")
}
