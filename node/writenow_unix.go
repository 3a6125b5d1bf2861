//go:build unix

package node

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// rawConnOf is the socket under a plain TCP connection, which writeNow can write without
// waiting; nil for anything else (TLS, test pipes).
func rawConnOf(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// writeNow writes as much of b as the socket takes at once and returns how much that was;
// errWouldBlock when its send buffer filled before the end. It never waits for the peer.
func writeNow(rc syscall.RawConn, b []byte) (int, error) {
	n := 0
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, e := syscall.Write(int(fd), b[n:])
			if errors.Is(e, syscall.EINTR) {
				continue
			}
			if e != nil {
				werr = e
				if errors.Is(e, syscall.EAGAIN) {
					werr = errWouldBlock
				}
				return true // never park in the poller here
			}
			if m <= 0 {
				werr = io.ErrShortWrite
				return true
			}
			n += m
		}
		return true
	})
	if err != nil {
		return n, err
	}
	return n, werr
}
