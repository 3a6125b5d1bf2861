package state

import (
	"bytes"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// The room records served from memory must be what the database holds: after a batch that
// creates a room and sends to it, after changes within one batch, after a reopen, and never
// changed by what a reader does with its copy.
func TestRoomRecordsFollowCommits(t *testing.T) {
	s := Open()
	f := &fsmT{t: t, s: s}
	const alice = "@alice:acme.test"
	room := &chain{t: t, room: "!r:acme.test"}
	create := []*event.Event{
		room.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public"}),
		room.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
	}
	msg := room.next(alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hi"})
	topic := room.next(alice, "m.room.topic", sk(""), map[string]string{"topic": "plans"})
	// One batch: the room is created, then written to twice before the transaction commits.
	res := f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: create}},
		&Command{Kind: KindEvent, Event: &EventCommand{Event: msg}},
		&Command{Kind: KindEvent, Event: &EventCommand{Event: topic}})
	for i, r := range res {
		if !r.OK() {
			t.Fatalf("command %d: %+v", i, r)
		}
	}
	check := func(s *Store, when string) {
		t.Helper()
		r, ok := s.Room(room.room)
		if !ok || r.LastEventID != topic.EventID || r.Depth != topic.Depth || r.Topic != "plans" || r.Power.Users[alice] != 100 {
			t.Fatalf("%s: room = %+v, %v", when, r, ok)
		}
	}
	check(s, "after the batch")

	// A reader's copy is its own (but for the power levels' maps, which nobody changes).
	r, _ := s.Room(room.room)
	r.LastEventID, r.Topic = "$changed", "changed"
	r.Power = PowerLevels{Users: map[string]int64{alice: 0}}
	check(s, "after a reader changed its copy")

	// A second create of the same id is refused even within one batch.
	again := &chain{t: t, room: room.room}
	dup := f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: []*event.Event{
		again.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public"})}}})[0]
	if dup.Code != CodeRoomInUse {
		t.Fatalf("second create: %+v", dup)
	}
	if _, ok := s.Room("!none:acme.test"); ok {
		t.Fatal("an unknown room was found")
	}

	// The state holds the same record: a store restored from its snapshot loads it.
	var snap bytes.Buffer
	if err := s.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	s2 := Open()
	defer s2.Close()
	if err := s2.Restore(&snap); err != nil {
		t.Fatal(err)
	}
	check(s2, "after restoring a snapshot")
}
