package node

import (
	"fmt"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

// TestNoPushFollowsASweep: once the hub's dispatcher meets a change that closes sessions (a
// snapshot install, a logout), those sessions must get no push of an event applied after it.
// The close runs on a goroutine of its own, and meanwhile the dispatcher went on pushing.
// After a snapshot install, the events between the node's old position and the snapshot's were
// never pushed: a session that got a later one before its close (1012) had a gap in its live
// pushes, and a client resuming from the last stream_pos it saw skipped the gap for good. After
// a logout, the revoked token's connection got events committed after it.
func TestNoPushFollowsASweep(t *testing.T) {
	n := startNode(t, nil)
	_, alice := n.register("alice")
	_, bob := n.register("bob")
	a, b := n.dial(alice), n.dial(bob)
	room := a.createRoom(map[string]any{"visibility": "public"})
	b.ok(map[string]any{"op": "join", "room": room})
	a.nextEvent(room, "m.room.member") // alice's own join
	a.nextEvent(room, "m.room.member") // bob's
	h := n.srv.hub
	sweeps := []struct {
		name  string
		sweep func()
		code  int
	}{
		{"snapshot install", func() { h.applied(&state.Applied{Restored: true}) }, closeResync},
		{"logout", func() {
			// Committed while the dispatcher is held: applying does not wait for it.
			logout := &state.Command{Kind: state.KindLogout, Logout: &state.Logout{TokenHash: hashToken(alice)}}
			if _, oerr := n.srv.commit(logout); oerr != nil {
				t.Errorf("logout: %v", oerr)
			}
		}, closeAuth},
	}
	for i := range 4 {
		for _, sw := range sweeps {
			// Hold the dispatcher (it waits for the hub lock as it sweeps) so that the sweep
			// and the next event sit back to back in its queue, as when Raft applies entries
			// right after the snapshot it installed.
			h.mu.Lock()
			sw.sweep()
			waitQueue(t, h, func(l int) bool { return l == 0 }) // the dispatcher took the sweep
			body := fmt.Sprintf("after the %s, round %d", sw.name, i)
			b.pipeline(map[string]any{"op": "send", "room_id": room, "txn_id": body,
				"content": map[string]any{"msgtype": "m.text", "body": body}})
			waitQueue(t, h, func(l int) bool { return l > 0 }) // the send was applied
			h.mu.Unlock()
			if code := waitClosed(t, a); code != sw.code {
				t.Fatalf("%s: closed with %d, want %d", sw.name, code, sw.code)
			}
		drain:
			for {
				select {
				case m := <-a.pushes:
					if m["op"] != "event" {
						continue
					}
					if e := m["event"].(map[string]any); e["type"] == "m.room.message" {
						t.Fatalf("round %d: an event applied after the %s was pushed before the close: %v", i, sw.name, e["content"])
					}
				default:
					break drain
				}
			}
			if sw.code == closeAuth {
				b.nextEvent(room, "m.room.message") // the sender's own push: delivered
				code, out := n.post("/v1/login", map[string]string{"username": "alice", "password": "correct horse"}, "")
				if code != 200 {
					t.Fatalf("login: %d %v", code, out)
				}
				alice = out["access_token"].(string)
			} else {
				waitClosed(t, b)
				b = n.dial(bob)
				b.ok(map[string]any{"op": "ping"}) // in the hub by the answer
			}
			a = n.dial(alice)
			a.ok(map[string]any{"op": "ping"})
		}
	}
}

// waitQueue waits until the length of the hub's queue satisfies ok; the caller holds h.mu,
// which it releases if the wait fails.
func waitQueue(t *testing.T, h *hub, ok func(int) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok(len(h.queue)) {
		if time.Now().After(deadline) {
			h.mu.Unlock()
			t.Fatalf("the hub's queue holds %d changes", len(h.queue))
		}
		time.Sleep(time.Millisecond)
	}
}
