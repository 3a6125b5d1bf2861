package node

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// eventIDs extracts event ids from a list of events.
func eventIDs(list any) []string {
	var ids []string
	for _, e := range list.([]any) {
		ids = append(ids, e.(map[string]any)["event_id"].(string))
	}
	return ids
}

func TestHistoryPagesBackCompletely(t *testing.T) {
	n := startNode(t, nil)
	_, tok := n.register("")
	c := n.dial(tok)
	room := c.createRoom(map[string]any{"name": "log"})
	var sent []string
	for i := 0; i < 130; i++ {
		sent = append(sent, c.send(room, fmt.Sprintf("h%d", i), fmt.Sprintf("m%d", i)))
	}
	var got []string
	before := ""
	pages := 0
	for {
		req := map[string]any{"op": "history", "room_id": room, "limit": 40}
		if before != "" {
			req["before"] = before
		}
		page := c.ok(req)
		ids := eventIDs(page["events"])
		got = append(ids, got...)
		pages++
		start, more := page["start"].(string)
		if !more {
			break
		}
		before = start
		if pages > 20 {
			t.Fatal("history never ended")
		}
	}
	// The room's first events are its creation state; the messages are the last 130, in order.
	if len(got) < 130 {
		t.Fatalf("history has %d events, want at least 130", len(got))
	}
	msgs := got[len(got)-130:]
	seen := map[string]bool{}
	for i, id := range msgs {
		if id != sent[i] {
			t.Fatalf("history[%d] = %s, want %s", i, id, sent[i])
		}
		if seen[id] {
			t.Fatalf("duplicate %s", id)
		}
		seen[id] = true
	}
}

func TestSendIsIdempotentPerTxnID(t *testing.T) {
	n := startNode(t, nil)
	_, tok := n.register("")
	c := n.dial(tok)
	room := c.createRoom(map[string]any{})
	first := c.send(room, "same", "once")
	if again := c.send(room, "same", "once"); again != first {
		t.Fatalf("resend gave %s, want %s", again, first)
	}
	n.restart()
	c = n.dial(tok)
	if again := c.send(room, "same", "once"); again != first {
		t.Fatalf("resend after restart gave %s, want %s", again, first)
	}
	h := c.ok(map[string]any{"op": "history", "room_id": room})
	count := 0
	for _, id := range eventIDs(h["events"]) {
		if id == first {
			count++
		}
	}
	if count != 1 {
		t.Fatalf("event stored %d times", count)
	}
}

// TestTxnIDsInBadUTF8AreNotMerged: two sends whose txn_ids differ only in bytes that are not
// UTF-8 are two different txn_ids to the client. Decoded leniently (each bad byte read as
// U+FFFD) they were one: the second was answered with the first's event_id and its message
// was dropped. A frame that is not UTF-8 is no JSON, and is refused as such.
func TestTxnIDsInBadUTF8AreNotMerged(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tok := n.register("")
	c := n.dial(tok)
	room := c.createRoom(map[string]any{})
	// Bytes that are not UTF-8, and lone surrogates escaped (valid UTF-8, read as U+FFFD too).
	for i, txn := range []string{"t\xff", "t\xfe", `t\ud800`, `t\udbff`, `t\udc00`} {
		id := fmt.Sprintf("bad%d", i)
		writeRaw(t, c, websocket.TextMessage, []byte(`{"op":"send","id":"`+id+`","room_id":"`+room+
			`","txn_id":"`+txn+`","content":{"msgtype":"m.text","body":"message `+id+`"}}`))
		if m := c.nextPush(func(m map[string]any) bool { return m["id"] == id }); m["op"] != "error" || m["code"] != "M_BAD_JSON" {
			t.Fatalf("send with txn_id %q: %v, want M_BAD_JSON", txn, m)
		}
	}
	c.ok(map[string]any{"op": "ping"}) // the connection stays open
	// A surrogate pair escaped is one character, and fine.
	writeRaw(t, c, websocket.TextMessage, []byte(`{"op":"send","id":"pair","room_id":"`+room+
		`","txn_id":"t\ud83d\ude00","content":{"msgtype":"m.text","body":"a pair"}}`))
	if m := c.nextPush(func(m map[string]any) bool { return m["id"] == "pair" }); m["op"] != "ok" {
		t.Fatalf("send with an escaped surrogate pair in its txn_id: %v", m)
	}
}

// syncEvents returns the message bodies of a sync answer's room, in order.
func syncBodies(reply map[string]any, room string) []string {
	rooms := reply["rooms"].(map[string]any)
	r, ok := rooms[room].(map[string]any)
	if !ok {
		return nil
	}
	var out []string
	for _, e := range r["events"].([]any) {
		ev := e.(map[string]any)
		if ev["type"] == "m.room.message" {
			out = append(out, ev["content"].(map[string]any)["body"].(string))
		}
	}
	return out
}

func TestSyncResumesExactlyAfterDisconnectAndRestart(t *testing.T) {
	n := startNode(t, nil)
	_, tokA := n.register("")
	_, tokB := n.register("")
	a := n.dial(tokA)
	b := n.dial(tokB)
	room := a.createRoom(map[string]any{"visibility": "public"})
	b.ok(map[string]any{"op": "join", "room": room})
	a.send(room, "1", "before")
	initial := b.ok(map[string]any{"op": "sync"})
	next := initial["next"].(string)
	if got := syncBodies(initial, room); len(got) != 1 || got[0] != "before" {
		t.Fatalf("initial sync bodies %v", got)
	}
	b.close()

	for i := 0; i < 3; i++ {
		a.send(room, fmt.Sprintf("d%d", i), fmt.Sprintf("while away %d", i))
	}
	b = n.dial(tokB)
	resumed := b.ok(map[string]any{"op": "sync", "since": next})
	if got := syncBodies(resumed, room); fmt.Sprint(got) != "[while away 0 while away 1 while away 2]" {
		t.Fatalf("resume after disconnect: %v", got)
	}
	next = resumed["next"].(string)
	// Live pushes after the ok are exactly the events after next.
	a.send(room, "live", "live one")
	if ev := b.nextEvent(room, "m.room.message"); ev["content"].(map[string]any)["body"] != "live one" {
		t.Fatalf("live push %v", ev)
	}
	next = b.ok(map[string]any{"op": "sync", "since": next})["next"].(string)
	b.close()

	a.send(room, "r1", "before restart")
	n.restart()
	a = n.dial(tokA)
	a.send(room, "r2", "after restart")
	b = n.dial(tokB)
	resumed = b.ok(map[string]any{"op": "sync", "since": next})
	if got := syncBodies(resumed, room); fmt.Sprint(got) != "[before restart after restart]" {
		t.Fatalf("resume after restart: %v", got)
	}
	empty := b.ok(map[string]any{"op": "sync", "since": resumed["next"]})
	if len(empty["rooms"].(map[string]any)) != 0 {
		t.Fatalf("sync with nothing new returned %v", empty["rooms"])
	}
}

func TestSyncLimitsLargeGaps(t *testing.T) {
	n := startNode(t, nil)
	_, tok := n.register("")
	c := n.dial(tok)
	room := c.createRoom(map[string]any{})
	next := c.ok(map[string]any{"op": "sync"})["next"].(string)
	for i := 0; i < 60; i++ {
		c.send(room, fmt.Sprint(i), fmt.Sprint(i))
	}
	r := c.ok(map[string]any{"op": "sync", "since": next})["rooms"].(map[string]any)[room].(map[string]any)
	if r["limited"] != true || len(r["events"].([]any)) != 50 {
		t.Fatalf("limited=%v events=%d", r["limited"], len(r["events"].([]any)))
	}
	page := c.ok(map[string]any{"op": "history", "room_id": room, "before": r["start"], "limit": 100})
	if got := len(page["events"].([]any)); got < 10 {
		t.Fatalf("paging back from sync start found %d events, want the 10 left out (and older)", got)
	}
}

func TestSlowConsumerIsCutOffOthersKeepReceiving(t *testing.T) {
	// The slow client reads again at once, or only 4 s after the cut: still well within the
	// node's write deadline (10 s), so the close frame must reach it either way. Without
	// pacing the write pool writes; with it (ws.write_delay_ms) the session's own writer does.
	t.Run("reads again at once", func(t *testing.T) { testSlowConsumer(t, 0, 0) })
	t.Run("reads again 4s later", func(t *testing.T) { testSlowConsumer(t, 0, 4*time.Second) })
	t.Run("paced, reads again 4s later", func(t *testing.T) { testSlowConsumer(t, 10*time.Millisecond, 4*time.Second) })
}

// testSlowConsumer: a client stops reading while its room is busy, is cut off by the node,
// and starts reading again after pause.
func testSlowConsumer(t *testing.T, writeDelay, pause time.Duration) {
	n := startNode(t, func(o *Options) { o.SendQueue = 8; o.WriteDelay = writeDelay })
	_, tokA := n.register("")
	_, tokS := n.register("")
	_, tokF := n.register("")
	a := n.dial(tokA)
	room := a.createRoom(map[string]any{"visibility": "public"})
	fast := n.dial(tokF)
	fast.ok(map[string]any{"op": "join", "room": room})

	// The slow client authenticates, joins, and then never reads again.
	// A tiny receive buffer makes the node's side fill up after a few frames.
	dialer := websocket.Dialer{NetDialContext: (&net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { setReceiveBuffer(fd, 4096) })
	}}).DialContext}
	conn, _, err := dialer.Dial("ws://"+n.addr+"/v1/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	must := func(v map[string]any) {
		if err := conn.WriteJSON(v); err != nil {
			t.Fatal(err)
		}
		var reply map[string]any
		for reply["op"] != "ok" {
			reply = nil
			if err := conn.ReadJSON(&reply); err != nil {
				t.Fatal(err)
			}
			if reply["op"] == "error" {
				t.Fatalf("slow client setup: %v", reply)
			}
		}
	}
	must(map[string]any{"op": "auth", "id": "a", "token": tokS})
	must(map[string]any{"op": "join", "id": "j", "room": room})

	body := string(make([]byte, 16<<10)) // large frames fill socket buffers quickly
	body = fmt.Sprintf("%x", body)[:30000]
	deadline := time.Now().Add(60 * time.Second)
	dropped := false
	for i := 0; !dropped; i++ {
		if time.Now().After(deadline) {
			t.Fatal("slow consumer was never disconnected")
		}
		a.send(room, fmt.Sprintf("s%d", i), body)
		fast.nextEvent(room, "m.room.message")
		dropped = testutilCounter(n.srv.metrics.slowConsumers) > 0
	}
	// The slow client sees close 1008 "slow consumer" once it reads again, even a while
	// after the cut (well within the node's write deadline): whatever the node had written
	// before the cut, then the close frame. A read timeout, an EOF or any other ending fails.
	// Meanwhile the room goes on: the node closing the slow client holds nobody up.
	for i, start := 0, time.Now(); time.Since(start) < pause; i++ {
		sent := time.Now()
		a.send(room, fmt.Sprintf("p%d", i), "while the slow client is away")
		fast.nextEvent(room, "m.room.message")
		if d := time.Since(sent); d > 5*time.Second { // a fan-out held up by the cut would wait out the 10 s write deadline
			t.Fatalf("a send reached the fast client after %v while the slow one was being cut", d)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	frames := 0
	for {
		_, _, err := conn.ReadMessage()
		if err == nil {
			frames++
			continue
		}
		ce, ok := err.(*websocket.CloseError)
		if !ok || ce.Code != websocket.ClosePolicyViolation || ce.Text != "slow consumer" {
			t.Fatalf("after %d frames the slow client's connection ended with %v, want close 1008 \"slow consumer\"", frames, err)
		}
		break
	}
	a.send(room, "after", "still flowing")
	if ev := fast.nextEvent(room, "m.room.message"); ev["content"].(map[string]any)["body"] == "" {
		t.Fatal("fast client stopped receiving")
	}
}

// TestSyncSinceTheEmptyStreamIsNoInitialSync: the first sync in a new org, before its first
// event, answers next "s0". A sync since that token gives the events after it like any other
// (a room the user joined and was kicked from meanwhile included, with the kick); read as an
// initial sync it left that room out, and the client, pushed the join live, kept it as joined.
func TestSyncSinceTheEmptyStreamIsNoInitialSync(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tokA := n.register("")
	bobID, tokB := n.register("")
	alice, bob := n.dial(tokA), n.dial(tokB)
	next := bob.ok(map[string]any{"op": "sync"})["next"]
	if next != "s0" {
		t.Fatalf("next %v before the org's first event, want s0", next)
	}
	room := alice.createRoom(map[string]any{"visibility": "public"})
	bob.ok(map[string]any{"op": "join", "room": room})
	alice.ok(map[string]any{"op": "kick", "room_id": room, "user_id": bobID})
	r, _ := bob.ok(map[string]any{"op": "sync", "since": next})["rooms"].(map[string]any)[room].(map[string]any)
	if r == nil {
		t.Fatal("the sync since s0 leaves out the room bob joined and was kicked from")
	}
	events := r["events"].([]any)
	last := events[len(events)-1].(map[string]any)
	if last["state_key"] != bobID || contentOf(last)["membership"] != "leave" {
		t.Fatalf("the room's last event in the sync is %v, want bob's kick", last)
	}
}
