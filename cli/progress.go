package cli

import (
	"fmt"
	"time"
)

// spinnerFrames are drawn in turn while a long call runs on a terminal.
var spinnerFrames = []rune(`|/-\`)

// wait runs fn, a call that may take long (creating a VPS waits for its
// sshd), and shows that it is running: on a terminal a spinner line on
// stderr with the elapsed time, erased when fn returns; elsewhere one plain
// line, so logs stay readable. The spinner goroutine has ended when wait
// returns.
func (env *Env) wait(msg string, fn func() error) error {
	if !env.StderrTerminal {
		fmt.Fprintf(env.Stderr, "%s...\n", msg)
		return fn()
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		start := env.Now()
		tick := time.NewTicker(150 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(env.Stderr, "\r%c %s... %ds ", spinnerFrames[i%len(spinnerFrames)], msg,
				int(env.Now().Sub(start)/time.Second))
			select {
			case <-stop:
				fmt.Fprint(env.Stderr, "\r\x1b[K") // erase the line
				return
			case <-tick.C:
			}
		}
	}()
	err := fn()
	close(stop)
	<-done
	return err
}
