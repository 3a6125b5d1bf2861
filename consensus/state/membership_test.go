package state

import (
	"testing"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/kv"
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

// Member records written before the Outsider field have none: a ban with no membership before
// it is still an outsider's (its unban and a ban again are not for them to hear of), any other
// record is a former member's as it was (an invitee banned hears of the unban). Records
// written since carry the verdict along.
func TestAMemberRecordWithoutOutsiderKeepsItsVerdict(t *testing.T) {
	s := Open()
	defer s.Close()
	f := &fsmT{t: t, s: s}
	const alice, eve, bob = "@alice:acme.test", "@eve:acme.test", "@bob:acme.test"
	room := &chain{t: t, room: "!r:acme.test"}
	f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: []*event.Event{
		room.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "private"}),
		room.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
		room.next(alice, "m.room.power_levels", sk(""), DefaultPowerLevels(alice)),
	}}})
	// As an older version wrote them (field for field, without outsider).
	err := s.update(func(tx *kv.Tx) error {
		b := tx.Bucket(bucketMembers)
		if err := b.Put(key2(room.room, eve), []byte(`{"membership":"ban","pos":2}`)); err != nil {
			return err
		}
		return b.Put(key2(room.room, bob), []byte(`{"membership":"ban","pos":2,"prev":"invite"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	change := func(user, membership, want string) {
		t.Helper()
		f.index++
		res, applied, err := s.ApplyEntries([]Entry{{Index: f.index, Batch: &Batch{Commands: []*Command{{Kind: KindEvent,
			Event: &EventCommand{Event: room.next(alice, "m.room.member", sk(user), map[string]string{"membership": membership})}}}}}})
		if err != nil || !res[0][0].OK() {
			t.Fatalf("%s of %s: %+v %v", membership, user, res, err)
		}
		if got := applied.Events[0].Target; got != want {
			t.Fatalf("%s of %s pushed to %q, want %q (record %+v)", membership, user, got, want, s.Membership(room.room, user))
		}
	}
	change(eve, Leave, "")
	change(eve, Ban, "")
	change(bob, Leave, bob)
	change(bob, Ban, bob)
	if m := s.Membership(room.room, eve); !m.Outsider {
		t.Fatalf("eve's record after the changes: %+v", m)
	}
	if m := s.Membership(room.room, bob); m.Outsider {
		t.Fatalf("bob's record after the changes: %+v", m)
	}
}
