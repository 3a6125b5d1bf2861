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

// TestStrangersHearNothingOfTheRoom: whether a user hears of their own membership change is
// read from their member record alone (Member.IsOutsider), so that a node that restored an
// older snapshot and one that replayed the log reach the same verdict. A stranger hears of
// none of their bans and unbans; a member of everything; an invitee of the invite and of its
// end, and then is a stranger again.
func TestStrangersHearNothingOfTheRoom(t *testing.T) {
	s := Open()
	defer s.Close()
	f := &fsmT{t: t, s: s}
	const alice = "@alice:acme.test"
	room := &chain{t: t, room: "!r:acme.test"}
	f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: []*event.Event{
		room.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public"}),
		room.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
		room.next(alice, "m.room.power_levels", sk(""), DefaultPowerLevels(alice)),
	}}})
	change := func(sender, user, membership string, heard bool) {
		t.Helper()
		f.index++
		res, applied, err := s.ApplyEntries([]Entry{{Index: f.index, Batch: &Batch{Commands: []*Command{{Kind: KindEvent,
			Event: &EventCommand{Event: room.next(sender, "m.room.member", sk(user), map[string]string{"membership": membership})}}}}}})
		if err != nil || !res[0][0].OK() {
			t.Fatalf("%s of %s: %+v %v", membership, user, res, err)
		}
		want := ""
		if heard {
			want = user
		}
		if got := applied.Events[0].Target; got != want {
			t.Fatalf("%s of %s pushed to %q, want %q (record %+v)", membership, user, got, want, s.Membership(room.room, user))
		}
	}
	const eve, bob, carol, dan = "@eve:acme.test", "@bob:acme.test", "@carol:acme.test", "@dan:acme.test"
	// A stranger: banned, unbanned, banned again.
	change(alice, eve, Ban, false)
	change(alice, eve, Leave, false)
	change(alice, eve, Ban, false)
	// An invitee: the invite and its end by a ban; the unban finds a stranger; a new invite.
	change(alice, bob, Invite, true)
	change(alice, bob, Ban, true)
	change(alice, bob, Leave, false)
	change(alice, bob, Invite, true)
	// A member: everything, also long after the join ended.
	change(carol, carol, Join, true)
	change(carol, carol, Leave, true)
	change(alice, carol, Ban, true)
	change(alice, carol, Leave, true)
	// An invitee who declines hears of it; a ban after that finds a stranger.
	change(alice, dan, Invite, true)
	change(dan, dan, Leave, true)
	change(alice, dan, Ban, false)
}
