//go:build !unix

package node

import (
	"net"
	"syscall"
)

// rawConnOf: without a non-blocking write here, every connection has its own writer goroutine.
func rawConnOf(net.Conn) syscall.RawConn { return nil }

func writeNow(syscall.RawConn, []byte) (int, error) { return 0, errWouldBlock }
