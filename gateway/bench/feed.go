package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// The upload's data comes from a child process (this binary, re-executed
// with feedChildArg) writing into ssh's stdin, not from a goroutine of this
// one: on path C this process is the host and gateway, whose CPU per GiB is
// the figure that matters. A generator goroutine cost this process 0.7 to
// 1.0 core-s/GiB on path A (its pipe writes 0.4 to 0.5, the rest the Go
// scheduler's wake-ups around them on other threads) but nothing measurable
// on path C, where it kept the host's threads busy and so cut the
// gateway's own wake-ups and page faults: subtracting path A's figure
// understated the gateway by about 0.9 core-s/GiB (BENCHMARKS.md).
const feedChildArg = "-feed-child"

// chunkSize is what the generator writes to ssh's stdin per call.
const chunkSize = 1 << 20

// feedStartedAfter is how much the generator writes before it reports that
// the timed part begins: the first chunk fits in the pipe, the second
// returns once ssh has read, that is once the session is up.
const feedStartedAfter = 2 * chunkSize

// feeder is a running generator child.
type feeder struct {
	cmd     *exec.Cmd
	started *os.File // read end of the child's fd 3: one byte at feedStartedAfter
}

// startFeeder starts a child that writes size bytes to w (then exits,
// closing it). The caller closes its own copy of w.
func startFeeder(ctx context.Context, w *os.File, size int64) (*feeder, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	sr, sw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer sw.Close()
	cmd := exec.CommandContext(ctx, exe, feedChildArg, strconv.FormatInt(size, 10))
	cmd.Stdout, cmd.Stderr = w, os.Stderr
	cmd.ExtraFiles = []*os.File{sw}
	if err := cmd.Start(); err != nil {
		sr.Close()
		return nil, err
	}
	return &feeder{cmd: cmd, started: sr}, nil
}

// waitStarted returns when the child has written feedStartedAfter bytes,
// or an error if it exited before.
func (f *feeder) waitStarted() error {
	var b [1]byte
	if _, err := f.started.Read(b[:]); err != nil {
		return errors.New("the data generator ended before the upload started")
	}
	return nil
}

// wait reaps the child and returns its CPU seconds (user and system).
func (f *feeder) wait() (float64, error) {
	f.started.Close()
	err := f.cmd.Wait()
	var cpu float64
	if ru, ok := f.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		cpu = timeval(ru.Utime) + timeval(ru.Stime)
	}
	if err != nil {
		return cpu, fmt.Errorf("data generator: %w", err)
	}
	return cpu, nil
}

func timeval(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// feedChild is the generator's main: write os.Args[2] bytes of one random
// chunk, over and over, to stdout, with plain blocking writes, and one byte
// to fd 3 after feedStartedAfter of them.
func feedChild() int {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "feed child: want a size")
		return 2
	}
	size, err := strconv.ParseInt(os.Args[2], 10, 64)
	if err != nil || size < feedStartedAfter {
		fmt.Fprintf(os.Stderr, "feed child: bad size %q\n", os.Args[2])
		return 2
	}
	growPipe(os.Stdout)
	buf := make([]byte, chunkSize)
	_, _ = rand.Read(buf)
	started := os.NewFile(3, "started")
	var written int64
	for written < size {
		n := min(int64(len(buf)), size-written)
		if _, err := os.Stdout.Write(buf[:n]); err != nil {
			fmt.Fprintf(os.Stderr, "feed child: write after %d bytes: %v\n", written, err)
			return 1
		}
		written += n
		if started != nil && written >= feedStartedAfter {
			_, _ = started.Write([]byte{1})
			started.Close()
			started = nil
		}
	}
	return 0
}

// growPipe asks for a pipe of chunkSize (F_SETPIPE_SZ; the default is 64
// KiB), so that feeding ssh costs fewer wake-ups. Best effort: the pipe
// keeps its size if the kernel refuses.
func growPipe(f *os.File) {
	const fSetPipeSz = 1031 // F_SETPIPE_SZ, linux/fcntl.h
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _, _ = syscall.Syscall(syscall.SYS_FCNTL, fd, fSetPipeSz, chunkSize)
	})
}
