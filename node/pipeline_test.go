package node

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// A client that sends without waiting for each ok gets every message committed once, in the
// order sent, in fewer log entries than messages; a request after the sends sees them all.
func TestPipelinedSendsKeepOrder(t *testing.T) {
	n := startNode(t, nil)
	_, tok := n.register("alice")
	alice := n.dial(tok)
	room := alice.createRoom(map[string]any{"visibility": "private"})

	const count = 80
	before := n.srv.cluster.AppliedIndex()
	type pending struct {
		body string
		ch   chan map[string]any
	}
	var sent []pending
	write := alice.pipeline
	for i := range count {
		body := fmt.Sprintf("m%03d", i)
		txn := fmt.Sprintf("t%03d", i)
		if i == 40 {
			txn = "t010" // a repeat of an earlier txn_id: answered with that event, not a new one
		}
		ch := write(map[string]any{"op": "send", "room_id": room, "txn_id": txn,
			"content": map[string]any{"msgtype": "m.text", "body": body}})
		sent = append(sent, pending{body: body, ch: ch})
		if i == 20 { // a bad send in the middle is refused alone
			bad := write(map[string]any{"op": "send", "room_id": room, "content": map[string]any{"msgtype": "m.text", "body": "x"}})
			defer func() {
				if m := <-bad; m["code"] != "M_INVALID_PARAM" {
					t.Errorf("send without txn_id: %v", m)
				}
			}()
		}
	}
	hist := write(map[string]any{"op": "history", "room_id": room, "limit": 100})

	ids := make([]string, count)
	for i, p := range sent {
		select {
		case m := <-p.ch:
			if m["op"] != "ok" {
				t.Fatalf("send %d: %v", i, m)
			}
			ids[i] = m["event_id"].(string)
		case <-time.After(15 * time.Second):
			t.Fatalf("no answer to send %d", i)
		}
	}
	if ids[40] != ids[10] {
		t.Fatalf("a repeated txn_id got a new event %s (first %s)", ids[40], ids[10])
	}
	var h map[string]any
	select {
	case h = <-hist:
	case <-time.After(15 * time.Second):
		t.Fatal("no answer to history")
	}
	var bodies []string
	var lastPos float64
	for _, raw := range h["events"].([]any) {
		e := raw.(map[string]any)
		if e["type"] != "m.room.message" {
			continue
		}
		pos := e["stream_pos"].(float64)
		if pos <= lastPos {
			t.Fatalf("stream positions out of order: %v after %v", pos, lastPos)
		}
		lastPos = pos
		bodies = append(bodies, e["content"].(map[string]any)["body"].(string))
	}
	var want []string
	for i, p := range sent {
		if i != 40 {
			want = append(want, p.body)
		}
	}
	if fmt.Sprint(bodies) != fmt.Sprint(want) {
		t.Fatalf("history (asked right after the sends) is\n%v\nwant, in send order,\n%v", bodies, want)
	}
	if entries := n.srv.cluster.AppliedIndex() - before; entries >= count-1 {
		t.Fatalf("%d sends took %d log entries: they were not committed together", count, entries)
	}
}

// Sends that differ only in their txn_id are different messages, however alike: pipelined or
// from two connections of one user at once, each is stored, with an event id of its own.
// Their events would otherwise be twins (same sender, content, room head and millisecond) and
// the second would be answered with the first's id and lost.
func TestAlikeSendsAreEachStored(t *testing.T) {
	n := startNode(t, nil)
	_, tok := n.register("alice")
	alice, phone := n.dial(tok), n.dial(tok)
	room := alice.createRoom(map[string]any{"visibility": "private"})

	const pipelined, rounds = 8, 20
	chans := make([]chan map[string]any, 0, pipelined)
	for i := range pipelined {
		chans = append(chans, alice.pipeline(map[string]any{"op": "send", "room_id": room, "txn_id": fmt.Sprintf("p%d", i),
			"content": map[string]any{"msgtype": "m.text", "body": "ok"}}))
	}
	ids := map[string]bool{}
	for i, ch := range chans {
		m := awaitAnswer(t, ch)
		if m["op"] != "ok" {
			t.Fatalf("pipelined send %d: %v", i, m)
		}
		ids[m["event_id"].(string)] = true
	}
	if len(ids) != pipelined {
		t.Fatalf("%d pipelined alike sends got %d event ids", pipelined, len(ids))
	}
	for r := range rounds {
		a := alice.pipeline(map[string]any{"op": "send", "room_id": room, "txn_id": fmt.Sprintf("a%d", r),
			"content": map[string]any{"msgtype": "m.text", "body": "same"}})
		b := phone.pipeline(map[string]any{"op": "send", "room_id": room, "txn_id": fmt.Sprintf("b%d", r),
			"content": map[string]any{"msgtype": "m.text", "body": "same"}})
		ma, mb := awaitAnswer(t, a), awaitAnswer(t, b)
		if ma["op"] != "ok" || mb["op"] != "ok" {
			t.Fatalf("round %d: %v, %v", r, ma, mb)
		}
		if ma["event_id"] == mb["event_id"] {
			t.Fatalf("round %d: both connections' sends got event %v", r, ma["event_id"])
		}
	}
	h := alice.ok(map[string]any{"op": "history", "room_id": room, "limit": 100})
	messages := 0
	for _, raw := range h["events"].([]any) {
		if raw.(map[string]any)["type"] == "m.room.message" {
			messages++
		}
	}
	if messages != pipelined+2*rounds {
		t.Fatalf("history holds %d messages, want %d", messages, pipelined+2*rounds)
	}
}

// A send whose event the state machine finds already stored (a twin built on another node in
// the same millisecond; forced here with a clock that stops) is built again on the new room
// head, a bounded number of times.
func TestTwinSendsAreBuiltAgain(t *testing.T) {
	n := startNode(t, nil)
	_, tok := n.register("alice")
	alice := n.dial(tok)
	room := alice.createRoom(map[string]any{"visibility": "private"})
	n.srv.stamp = func(string) int64 { return 1700000000000 }

	// One at a time: the second twin is built again on the first, and stored.
	first := alice.send(room, "s1", "twin")
	second := alice.send(room, "s2", "twin")
	if first == second {
		t.Fatalf("the second send was answered with the first's event %s", first)
	}
	// One group of twins: every round stores one and builds the rest again, so after
	// sendAttempts rounds the sends still left are refused, never answered with another's id.
	// The group is handed to alice's session directly, so that it is one group.
	const group = sendAttempts + 2
	var sess *session
	n.srv.hub.mu.RLock()
	for s := range n.srv.hub.sessions["@alice:test.local"] {
		sess = s
	}
	n.srv.hub.mu.RUnlock()
	var queued []queuedSend
	var chans []chan map[string]any
	for i := range group {
		id := fmt.Sprintf("g%d", i)
		ch := make(chan map[string]any, 1)
		alice.mu.Lock()
		alice.wait[id] = ch
		alice.mu.Unlock()
		chans = append(chans, ch)
		queued = append(queued, queuedSend{id: id, r: &request{Op: "send", RoomID: room, TxnID: id,
			Content: json.RawMessage(`{"msgtype":"m.text","body":"twin"}`)}})
	}
	sess.commitGroup(queued)
	ids := map[string]bool{first: true, second: true}
	stored, refused := 0, 0
	for i, ch := range chans {
		switch m := awaitAnswer(t, ch); {
		case m["op"] == "ok" && !ids[m["event_id"].(string)]:
			ids[m["event_id"].(string)] = true
			stored++
		case m["op"] == "error" && m["code"] == "M_UNKNOWN":
			refused++
		default:
			t.Fatalf("send %d: %v", i, m)
		}
	}
	if stored != sendAttempts || refused != group-sendAttempts {
		t.Fatalf("%d twins: %d stored, %d refused; want %d and %d", group, stored, refused, sendAttempts, group-sendAttempts)
	}
	// A refused send's txn_id stays free: sent again (with a clock that moves), it is stored.
	n.srv.stamp = nil
	if id := alice.send(room, fmt.Sprintf("g%d", group-1), "twin"); ids[id] {
		t.Fatalf("the retried send got an existing event %s", id)
	}
}

func awaitAnswer(t *testing.T, ch chan map[string]any) map[string]any {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(15 * time.Second):
		t.Fatal("no answer")
		return nil
	}
}
