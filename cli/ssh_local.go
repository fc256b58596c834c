package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kohakuriver/kohakuriver/store"
)

// forwardDialTimeout bounds connecting to the gateway for one forwarded
// connection.
const forwardDialTimeout = 15 * time.Second

// serveLocal is kohakuriver ssh --local-port: a plain TCP forward from
// 127.0.0.1:port to the gateway's targetPort (see SSHCmd.localTarget),
// until ctx ends (Ctrl-C). The SSH session runs end to end between the
// user's client and the gateway, so the host key seen is the gateway's;
// the printed ssh line, with user, pins it with the same known_hosts file
// and alias as kohakuriver ssh.
func serveLocal(ctx context.Context, env *Env, cl *Cluster, v store.VPS, port, targetPort int, user, known, key string) error {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("--local-port %d: %w (choose another port)", port, err)
	}
	local := ln.Addr().(*net.TCPAddr).Port
	target := net.JoinHostPort(cl.Host, strconv.Itoa(targetPort))
	line := []string{"ssh"}
	if key != "" {
		line = append(line, "-i", shellQuote(key))
	}
	for _, o := range hostKeyOptions(known) {
		line = append(line, shellQuote(o))
	}
	line = append(line, "-p", strconv.Itoa(local), user+"@127.0.0.1")
	fmt.Fprintf(env.Stdout, "Forwarding 127.0.0.1:%d to VPS %s (gateway port %s). Connect with:\n\n  %s\n\n",
		local, v.Ref(), target, strings.Join(line, " "))
	fmt.Fprintln(env.Stdout, "The host key shown is the gateway's; the options above check it. Press Ctrl-C to stop.")
	f := &forwarder{ln: ln, target: target, log: env.Stderr, dial: (&net.Dialer{}).DialContext}
	err = f.serve(ctx)
	fmt.Fprintln(env.Stderr, "Forward stopped.")
	return err
}

// forwarder copies every connection accepted on ln to a new connection to
// target. serve owns ln; when it returns, every connection it made is
// closed and every goroutine it started has ended.
type forwarder struct {
	ln     net.Listener
	target string
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	log    io.Writer

	wg sync.WaitGroup // one per accepted connection
}

// serve accepts until ctx ends or the listener fails, then closes all
// forwarded connections and waits for their goroutines.
func (f *forwarder) serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer f.wg.Wait()
	defer cancel() // runs before Wait: ends every pipe
	stop := context.AfterFunc(ctx, func() { f.ln.Close() })
	defer stop()
	defer f.ln.Close()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("local forward: %w", err)
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.pipe(ctx, c)
		}()
	}
}

// pipe connects c to the target and copies both ways until both
// directions end, an error ends one, or ctx ends.
func (f *forwarder) pipe(ctx context.Context, c net.Conn) {
	defer c.Close()
	dctx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
	up, err := f.dial(dctx, "tcp", f.target)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(f.log, "kohakuriver: cannot reach the gateway at %s: %v\n", f.target, err)
		}
		return
	}
	defer up.Close()
	closeBoth := func() { c.Close(); up.Close() }
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()

	var wg sync.WaitGroup
	copyHalf := func(dst, src net.Conn) {
		defer wg.Done()
		if _, err := io.Copy(dst, src); err != nil {
			closeBoth() // a broken side ends the pair
			return
		}
		// EOF: pass the half-close on; the other direction may go on.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() == nil {
				return
			}
		}
		closeBoth()
	}
	wg.Add(2)
	go copyHalf(up, c)
	go copyHalf(c, up)
	wg.Wait()
}
