package node

import (
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
	write := func(frame map[string]any) chan map[string]any {
		id := fmt.Sprintf("p%d", alice.seq.Add(1))
		frame["id"] = id
		ch := make(chan map[string]any, 1)
		alice.mu.Lock()
		alice.wait[id] = ch
		alice.mu.Unlock()
		if err := alice.conn.WriteJSON(frame); err != nil {
			t.Fatal(err)
		}
		return ch
	}
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
