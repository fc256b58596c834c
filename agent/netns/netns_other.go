//go:build !linux

package netns

import (
	"context"
	"net"
)

// Dial is not supported outside Linux.
func Dial(context.Context, *net.Dialer, string, string, string) (net.Conn, error) {
	return nil, ErrUnsupported
}
