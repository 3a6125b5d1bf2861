package node

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestKeepAlivePingsAndDropsSilentClients: the node pings every PingInterval and drops a
// client that has not answered within PongTimeout (30 s and 60 s by default, shortened here).
// A client that answers pings, and sends nothing else, keeps its connection past several
// timeouts; one that stops answering is dropped after about PongTimeout.
func TestKeepAlivePingsAndDropsSilentClients(t *testing.T) {
	// Short, but with room for a loaded CI machine under -race: a's pongs must not miss six
	// pings in a row for a to be dropped by mistake.
	const (
		interval = 200 * time.Millisecond
		timeout  = 1200 * time.Millisecond
	)
	n := startNode(t, func(o *Options) { o.PingInterval = interval; o.PongTimeout = timeout })
	_, tokA := n.register("")
	_, tokB := n.register("")

	// a answers pings: gorilla's default ping handler sends the pong while a's reader reads.
	a := n.dial(tokA)

	// b reads everything but never answers a ping, and sends nothing after auth.
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var pingsB atomic.Int64
	conn.SetPingHandler(func(string) error { pingsB.Add(1); return nil })
	if err := conn.WriteJSON(map[string]any{"op": "auth", "id": "a", "token": tokB}); err != nil {
		t.Fatal(err)
	}
	var reply map[string]any
	if err := conn.ReadJSON(&reply); err != nil || reply["op"] != "ok" {
		t.Fatalf("auth: %v %v", reply, err)
	}
	authed := time.Now()
	bEnded := make(chan error, 1)
	go func() {
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				bEnded <- err
				return
			}
		}
	}()

	select {
	case err := <-bEnded:
		// Dropped: its connection ends (the node's close frame or EOF), about one timeout
		// after its last frame (the auth), give or take a ping interval.
		since := time.Since(authed)
		if since < timeout-interval {
			t.Fatalf("silent client dropped after %v, before the %v timeout: %v", since, timeout, err)
		}
		if pingsB.Load() == 0 {
			t.Fatal("silent client dropped without being pinged")
		}
		t.Logf("silent client dropped after %v (%d pings unanswered): %v", since, pingsB.Load(), err)
	case <-time.After(timeout + 5*time.Second):
		t.Fatalf("silent client not dropped within %v of a %v timeout", timeout+5*time.Second, timeout)
	}

	// Well past several timeouts since a last sent a frame of its own (its auth), the pongs
	// alone have kept it connected.
	if wait := 4*timeout - time.Since(authed); wait > 0 {
		time.Sleep(wait)
	}
	select {
	case <-a.closed:
		t.Fatalf("client answering pings was dropped (close code %d)", a.closeCode.Load())
	default:
	}
	a.ok(map[string]any{"op": "ping"})
}

// TestKeepAliveDefaults: the contract's timings, which TestKeepAlivePingsAndDropsSilentClients
// shortens: a ping every 30 s, a client silent for 60 s dropped. (No config key sets them.)
func TestKeepAliveDefaults(t *testing.T) {
	var o Options
	o.defaults()
	if o.PingInterval != 30*time.Second || o.PongTimeout != 60*time.Second {
		t.Fatalf("ping every %v, drop after %v; want 30s and 1m0s", o.PingInterval, o.PongTimeout)
	}
}
