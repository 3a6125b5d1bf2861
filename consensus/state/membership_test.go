package state

import (
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// Messages are authorized against the joined list, which a batch changes as it goes: a user who
// joins earlier in the same batch may send, one who left may not, wherever their id sorts among
// the members, and the recipients of each event are the members at that point.
func TestMembershipChangesWithinOneBatch(t *testing.T) {
	s := Open()
	f := &fsmT{t: t, s: s}
	const mia, amy, zed = "@mia:acme.test", "@amy:acme.test", "@zed:acme.test"
	room := &chain{t: t, room: "!r:acme.test"}
	f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: []*event.Event{
		room.next(mia, "m.room.create", sk(""), CreateContent{Creator: mia, Visibility: "public"}),
		room.next(mia, "m.room.member", sk(mia), map[string]string{"membership": Join}),
	}}})
	msg := func(sender string) *Command {
		return &Command{Kind: KindEvent, Event: &EventCommand{Event: room.next(sender, "m.room.message", nil,
			map[string]string{"msgtype": "m.text", "body": "hi from " + sender})}}
	}
	member := func(user, membership string) *Command {
		return &Command{Kind: KindEvent, Event: &EventCommand{Event: room.next(user, "m.room.member", sk(user),
			map[string]string{"membership": membership})}}
	}
	f.index++
	res, applied, err := s.ApplyEntries([]Entry{{Index: f.index, Batch: &Batch{Commands: []*Command{
		msg(amy),             // 0: not joined yet
		member(zed, Join),    // 1: sorts after mia
		member(amy, Join),    // 2: sorts before mia
		msg(amy),             // 3
		msg(zed),             // 4
		member(amy, "leave"), // 5
		msg(amy),             // 6: left
		msg(mia),             // 7
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	want := []bool{false, true, true, true, true, true, false, true}
	for i, r := range res[0] {
		if r.OK() != want[i] {
			t.Errorf("command %d: ok=%v want %v (%+v)", i, r.OK(), want[i], r)
		}
	}
	if got := len(applied.Events); got != 6 {
		t.Fatalf("%d events applied, want 6", got)
	}
	last := applied.Events[len(applied.Events)-1]
	if got := last.Recipients; len(got) != 2 || got[0] != mia || got[1] != zed {
		t.Fatalf("recipients of the last message: %v, want [mia zed]", got)
	}
	if got := s.members.get(room.room); len(got) != 2 || got[0] != mia || got[1] != zed {
		t.Fatalf("joined after the batch: %v", got)
	}
}
