package docker

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	gossh "golang.org/x/crypto/ssh"
)

// authorizedKeysHeader starts every authorized_keys file the runtime writes.
const authorizedKeysHeader = "# Managed by kohakuriver: the node agent rewrites this file; edits are lost.\n"

// SetAuthorizedKeys replaces loginUser's (default root) authorized_keys in
// the task's container with lines, each a complete authorized_keys line. It
// works whether the container runs or not, and also resets ~/.ssh to 0700
// and the file to 0600, owned by the user.
//
// Copying a file into a container replaces it in place, so a login racing
// with the rewrite may see the old or the new file (sshd reads it once per
// authentication attempt), never a partial mix of lines.
func (rt *Runtime) SetAuthorizedKeys(ctx context.Context, taskID, loginUser string, lines []string) error {
	content, err := authorizedKeysFile(lines)
	if err != nil {
		return err
	}
	c, err := rt.inspect(ctx, taskID)
	if err != nil {
		return err
	}
	if loginUser == "" {
		loginUser = DefaultLoginUser
	}
	if err := rt.writeAuthorizedKeys(ctx, c.ID, loginUser, content); err != nil {
		return err
	}
	rt.log.Info("vps authorized_keys written", "task_id", taskID, "user", loginUser, "lines", len(lines))
	return nil
}

// authorizedKeysFile validates lines and renders the file. A line with a
// line break would smuggle in a second key, so it is refused along with
// anything sshd could not parse.
func authorizedKeysFile(lines []string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(authorizedKeysHeader)
	for i, line := range lines {
		if strings.ContainsAny(line, "\r\n\x00") {
			return nil, fmt.Errorf("authorized_keys line %d contains a line break", i+1)
		}
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if _, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line)); err != nil {
			return nil, fmt.Errorf("authorized_keys line %d: %w", i+1, err)
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

// writeAuthorizedKeys installs content as user's ~/.ssh/authorized_keys
// in container id. sshd's StrictModes refuses the file unless ~/.ssh and the
// file belong to the user and are not group/world-writable: the tar headers
// set exactly 0700 and 0600 and the user's uid/gid.
func (rt *Runtime) writeAuthorizedKeys(ctx context.Context, id, user string, content []byte) error {
	u, err := rt.lookupUser(ctx, id, user)
	if err != nil {
		return err
	}
	err = rt.copyTo(ctx, id, u.home, []tarEntry{
		{name: ".ssh", dir: true, mode: 0o700, uid: u.uid, gid: u.gid},
		{name: ".ssh/authorized_keys", mode: 0o600, uid: u.uid, gid: u.gid, body: content},
	})
	if cerrdefs.IsNotFound(err) {
		return fmt.Errorf("%w: home directory %s of user %q does not exist", ErrNoUser, u.home, user)
	}
	if err != nil {
		return fmt.Errorf("write authorized_keys of %q: %w", user, err)
	}
	return nil
}

// passwdEntry is the part of an /etc/passwd line the runtime needs.
type passwdEntry struct {
	uid, gid int
	home     string
}

// lookupUser finds user in the container's /etc/passwd. The file belongs to
// the VPS's user: it is parsed defensively, and only its uid, gid and home
// are used.
func (rt *Runtime) lookupUser(ctx context.Context, id, user string) (passwdEntry, error) {
	data, err := rt.readFile(ctx, id, "/etc/passwd", 4<<20)
	if err != nil && !(user == "root" && cerrdefs.IsNotFound(err)) {
		return passwdEntry{}, fmt.Errorf("read /etc/passwd: %w", err)
	}
	if e, ok := parsePasswd(data, user); ok {
		return e, nil
	}
	if user == "root" {
		return passwdEntry{home: "/root"}, nil
	}
	return passwdEntry{}, fmt.Errorf("%w: no user %q in the container's /etc/passwd", ErrNoUser, user)
}

// parsePasswd returns user's entry from an /etc/passwd file
// (name:password:uid:gid:gecos:home:shell), and whether there was a valid
// one.
func parsePasswd(data []byte, user string) (passwdEntry, bool) {
	if user == "" {
		return passwdEntry{}, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 64<<10)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 7 || f[0] != user {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 31)
		gid, err2 := strconv.ParseUint(f[3], 10, 31)
		home := f[5]
		if err1 != nil || err2 != nil || !path.IsAbs(home) {
			continue
		}
		return passwdEntry{uid: int(uid), gid: int(gid), home: path.Clean(home)}, true
	}
	return passwdEntry{}, false
}

// tarEntry is one file or directory for copyTo. Owners and modes are
// explicit: Docker applies them as given.
type tarEntry struct {
	name     string // relative to the destination directory
	dir      bool
	mode     int64
	uid, gid int
	body     []byte
}

// copyTo extracts entries under the existing directory dest of container
// id. Existing files are replaced; existing directories keep their content
// and take the entry's owner and mode.
func (rt *Runtime) copyTo(ctx context.Context, id, dest string, entries []tarEntry) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, e := range entries {
		h := &tar.Header{
			Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			ModTime: now, Typeflag: tar.TypeReg, Size: int64(len(e.body)),
		}
		if e.dir {
			h.Typeflag, h.Name, h.Size = tar.TypeDir, e.name+"/", 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(e.body); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	_, err := rt.cli.CopyToContainer(ctx, id, client.CopyToContainerOptions{
		DestinationPath: dest,
		Content:         &buf,
	})
	return err
}

// readFile returns the regular file at p in container id (running or not),
// failing if it is larger than limit. The error matches
// cerrdefs.IsNotFound when there is no such file.
func (rt *Runtime) readFile(ctx context.Context, id, p string, limit int64) ([]byte, error) {
	res, err := rt.cli.CopyFromContainer(ctx, id, client.CopyFromContainerOptions{SourcePath: p})
	if err != nil {
		return nil, err
	}
	defer res.Content.Close()
	tr := tar.NewReader(res.Content)
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if h.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("read %s: not a regular file", p)
	}
	if h.Size > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", p, limit)
	}
	data, err := io.ReadAll(io.LimitReader(tr, limit))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return data, nil
}
