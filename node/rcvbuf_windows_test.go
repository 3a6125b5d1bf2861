package node

import "syscall"

// setReceiveBuffer shrinks a socket's receive buffer (a slow consumer's, in tests).
func setReceiveBuffer(fd uintptr, bytes int) {
	_ = syscall.SetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, bytes)
}
