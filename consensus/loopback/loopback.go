// Package loopback hands out free 127.0.0.1 addresses to tests that start real nodes on
// loopback, never the same one twice in a process: the kernel may give a just-closed
// listener's port out again at once, and a cluster handed one address twice cannot bootstrap.
package loopback

import (
	"net"
	"sync"
	"testing"
)

var handedOut sync.Map

// FreeAddr is a 127.0.0.1 address with a port nothing listened on a moment ago, and that no
// earlier call in this process returned.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, given := handedOut.LoadOrStore(addr, true); !given {
			return addr
		}
	}
}
