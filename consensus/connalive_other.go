//go:build !unix

package consensus

import "net"

// peerHungUp cannot peek without blocking here: a pooled connection is trusted, and a write
// on one the peer closed fails with an unknown outcome (the caller retries with its key).
func peerHungUp(net.Conn) bool { return false }
