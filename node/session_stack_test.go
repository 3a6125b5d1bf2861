package node

import (
	"runtime"
	"testing"

	"github.com/gorilla/websocket"
)

// An idle authenticated connection's reader idles on a fresh, shallow stack: authenticating
// (deep) happens on a goroutine that ends. When the reader itself authenticated, each idle
// connection kept the 8 KiB stack it grew, over half of its memory.
func TestIdleConnectionsKeepSmallStacks(t *testing.T) {
	n := startNode(t, func(o *Options) { o.Limits.ConnsPerUser = 1000 })
	user, token := n.register("idle")
	const conns = 300
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	open := make([]*websocket.Conn, 0, conns)
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for range conns {
		// A bare client: no reader goroutine of its own on this side of the measurement.
		c, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		if err := c.WriteJSON(map[string]any{"op": "auth", "id": "1", "token": token}); err != nil {
			t.Fatal(err)
		}
		var reply map[string]any
		if err := c.ReadJSON(&reply); err != nil || reply["op"] != "ok" {
			t.Fatalf("auth: %v %v", reply, err)
		}
	}
	waitFor(t, func() bool { return n.srv.hub.sessionCount(user) >= conns })
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	perConn := (int64(after.StackInuse) - int64(before.StackInuse)) / conns
	t.Logf("stack per idle connection: %d bytes", perConn)
	if perConn > 6<<10 {
		t.Fatalf("each idle connection holds %d bytes of stack; a fresh reader needs at most 4 KiB", perConn)
	}
}
