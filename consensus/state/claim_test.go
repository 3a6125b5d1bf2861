package state

import (
	"testing"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/kv"
)

// An event claims its txn id and event id before it is checked; a refused event and a repeat
// give back what they claimed, so nothing of them stays in the store.
func TestRefusedEventsClaimNothing(t *testing.T) {
	const alice, bob = "@alice:acme.test", "@bob:acme.test"
	s, f, room := newPublicRoom(t, alice, "!r:acme.test")
	send := func(e *event.Event, txn string) Result {
		return f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: e, TxnID: txn}})[0]
	}
	before := s.Size()
	// txnEvent reads the latest commit (TxnEvent may read an older published version).
	txnEvent := func(user, txn string) (string, bool) {
		var id string
		_ = s.view(func(tx *kv.Tx) error {
			id = string(tx.Bucket(bucketTxns).Get(key2(user, txn)))
			return nil
		})
		return id, id != ""
	}

	// Bob is not in the room: refused, and neither id stays claimed.
	early := room.next(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "early"})
	if r := send(early, "t1"); r.Code != CodeForbidden {
		t.Fatalf("send before joining: %+v", r)
	}
	unknown := &chain{t: t, room: "!nowhere:acme.test"}
	if r := send(unknown.next(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "x"}), "t2"); r.Code != CodeNotFound {
		t.Fatalf("send to an unknown room: %+v", r)
	}
	if after := s.Size(); after != before {
		t.Fatalf("refused events changed the store from %+v to %+v", before, after)
	}
	if id, ok := txnEvent(bob, "t1"); ok {
		t.Fatalf("a refused send's txn id stayed claimed for %s", id)
	}
	if _, ok := s.Event(early.EventID); ok {
		t.Fatal("a refused event's id stayed in the index")
	}

	// Once joined, the same txn id and the same event go through.
	room.last, room.depth = early.PrevEvents[0], early.Depth-1
	if r := send(room.next(bob, "m.room.member", sk(bob), map[string]string{"membership": Join}), ""); !r.OK() {
		t.Fatalf("join: %+v", r)
	}
	retry := room.next(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "again"})
	r := send(retry, "t1")
	if !r.OK() || r.EventID != retry.EventID {
		t.Fatalf("retry after joining: %+v", r)
	}
	if id, ok := txnEvent(bob, "t1"); !ok || id != retry.EventID {
		t.Fatalf("txn t1 is %q, %v", id, ok)
	}
	if got, ok := s.Event(retry.EventID); !ok || got.StreamPos != r.StreamPos {
		t.Fatalf("stored event %+v, %v; result %+v", got, ok, r)
	}

	// A repeat of the txn id answers the first outcome.
	if again := send(room.next(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "other"}), "t1"); again.EventID != r.EventID || again.StreamPos != r.StreamPos || !again.OK() {
		t.Fatalf("repeated txn answered %+v, first %+v", again, r)
	}
	// A known event under a new txn id is another send that built the same event (the same
	// sender, content, head and millisecond): refused for the node to build it again, never
	// answered with the stored event, which would lose it; the new txn id stays free.
	if again := send(retry, "t3"); again.Code != CodeEventExists || again.EventID != "" {
		t.Fatalf("known event under a new txn: %+v", again)
	}
	// Without a txn id (a relayed event, a state change) the same event is a repeat: answered.
	if again := send(retry, ""); !again.OK() || again.EventID != retry.EventID || again.StreamPos != r.StreamPos {
		t.Fatalf("known event without a txn: %+v", again)
	}
	if id, ok := txnEvent(bob, "t3"); ok {
		t.Fatalf("a repeat's txn id was claimed for %s", id)
	}
	next := room.next(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "next"})
	if r := send(next, "t3"); !r.OK() || r.EventID != next.EventID {
		t.Fatalf("txn t3 after the repeat: %+v", r)
	}
}

// newPublicRoom is a store holding one public room that creator made and joined, the state
// machine feeding it, and the room's chain of events.
func newPublicRoom(t *testing.T, creator, roomID string) (*Store, *fsmT, *chain) {
	s := Open()
	t.Cleanup(func() { s.Close() })
	f := &fsmT{t: t, s: s}
	room := &chain{t: t, room: roomID}
	f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: []*event.Event{
		room.next(creator, "m.room.create", sk(""), CreateContent{Creator: creator, Visibility: "public"}),
		room.next(creator, "m.room.member", sk(creator), map[string]string{"membership": Join}),
	}}})
	return s, f, room
}
