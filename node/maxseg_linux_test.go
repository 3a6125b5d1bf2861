//go:build linux

package node

import "syscall"

// canLimitSegment: setMaxSegment works here.
const canLimitSegment = true

// setMaxSegment lowers the MSS a socket announces before it connects, so that the peer's
// send buffer, which Linux sizes from the segment size, stays small on loopback too.
func setMaxSegment(fd uintptr, bytes int) {
	_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, bytes)
}
