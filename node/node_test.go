package node

import (
	"fmt"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestSendReachesMembers(t *testing.T) {
	n := startNode(t, nil)
	_, tokA := n.register("alice")
	_, tokB := n.register("bob")
	a := n.dial(tokA)
	b := n.dial(tokB)
	room := a.createRoom(map[string]any{"name": "General", "alias": "general", "visibility": "public"})
	joined := b.ok(map[string]any{"op": "join", "room": "#general:test.local"})
	if joined["room_id"] != room {
		t.Fatalf("join answered %v", joined)
	}
	id := a.send(room, "t1", "hello bob")
	ev := b.nextEvent(room, "m.room.message")
	if ev["event_id"] != id || ev["content"].(map[string]any)["body"] != "hello bob" {
		t.Fatalf("bob got %v", ev)
	}
	if ev["unsigned"] != nil {
		t.Fatalf("txn_id leaked to another user: %v", ev["unsigned"])
	}
	own := a.nextEvent(room, "m.room.message")
	if own["unsigned"].(map[string]any)["txn_id"] != "t1" {
		t.Fatalf("sender did not get its txn_id: %v", own)
	}
	for i := 0; i < 3; i++ {
		a.send(room, fmt.Sprintf("x%d", i), "more")
	}
}
