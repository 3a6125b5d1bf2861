//go:build unix

package consensus

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// peerHungUp reports whether an idle pooled connection is no use any more: its peer closed it
// (its process died, or it closed the stream) or sent something nobody asked for. It peeks at
// the socket without blocking, one system call: a request written on such a connection would
// fail after it may have been "sent", and the caller could not tell whether the peer read it.
func peerHungUp(conn net.Conn) bool {
	for {
		switch c := conn.(type) {
		case *trackedConn:
			conn = c.Conn
			continue
		case *tls.Conn:
			conn = c.NetConn() // a close_notify or a FIN shows on the socket beneath alike
			continue
		}
		break
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	hungUp := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// EAGAIN: nothing to read, the connection is idle and open. Anything else is a reset,
		// the end of the stream (n == 0) or bytes nobody asked for.
		hungUp = !errors.Is(rerr, syscall.EAGAIN) && !errors.Is(rerr, syscall.EWOULDBLOCK)
		return true // never wait for readiness
	})
	return err != nil || hungUp
}
