package state

import (
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// TestRemoteInvitePartialRoom: on globex.test, an invite from acme.test into a room globex has
// never seen makes a partial room; only membership changes are taken there until the join
// answer (remote_room) makes it a full room.
func TestRemoteInvitePartialRoom(t *testing.T) {
	s := Open()
	defer s.Close()
	f := &fsmT{t: t, s: s}
	c := &chain{t: t, room: "!r1:acme.test"}
	create := c.next("@alice:acme.test", "m.room.create", sk(""), CreateContent{Creator: "@alice:acme.test", Visibility: "private", Federate: true})
	aliceJoin := c.next("@alice:acme.test", "m.room.member", sk("@alice:acme.test"), map[string]string{"membership": Join})
	power := c.next("@alice:acme.test", "m.room.power_levels", sk(""), DefaultPowerLevels("@alice:acme.test"))
	name := c.next("@alice:acme.test", "m.room.name", sk(""), map[string]string{"name": "Secret"})
	invite := c.next("@alice:acme.test", "m.room.member", sk("@bob:globex.test"), map[string]string{"membership": Invite})

	// Without the flag an unknown room is refused, as before.
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: invite.Clone()}}); r[0].Code != CodeNotFound {
		t.Fatalf("unflagged invite: %+v", r[0])
	}
	// A message is never a way in, even flagged.
	msg := c.next("@alice:acme.test", "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "x"})
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: msg.Clone(), InviteRoom: true}}); r[0].OK() {
		t.Fatal("a message made a partial room")
	}
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: invite.Clone(), InviteRoom: true}}); !r[0].OK() {
		t.Fatalf("invite refused: %+v", r[0])
	}
	room, ok := s.Room(c.room)
	if !ok || !room.Partial || !room.Federate {
		t.Fatalf("room after invite: %+v %v", room, ok)
	}
	if m := s.Membership(c.room, "@bob:globex.test").Membership; m != Invite {
		t.Fatalf("bob is %q", m)
	}
	rooms, _ := s.UserRooms("@bob:globex.test")
	if len(rooms) != 1 || rooms[0].Membership != Invite {
		t.Fatalf("bob's rooms: %+v", rooms)
	}
	sync, err := s.Sync("@bob:globex.test", 0, 50)
	if err != nil || sync.Rooms[c.room] == nil || len(sync.Rooms[c.room].Events) != 1 || sync.Rooms[c.room].Events[0].EventID != invite.EventID {
		t.Fatalf("bob's sync: %+v %v", sync, err)
	}
	// Nothing but membership is taken in a partial room; a local user cannot invite there.
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: msg.Clone()}}); r[0].OK() {
		t.Fatal("a message was stored in a partial room")
	}
	local := &event.Event{RoomID: c.room, Sender: "@bob:globex.test", Origin: "globex.test", OriginTS: 9, Type: "m.room.member",
		StateKey: sk("@carol:globex.test"), Content: []byte(`{"membership":"invite"}`), PrevEvents: []string{invite.EventID}, Depth: 6}
	if err := event.Seal(local); err != nil {
		t.Fatal(err)
	}
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: local}}); r[0].OK() {
		t.Fatal("bob invited someone into a room he has not joined")
	}

	// Joining: the home org's answer turns the room into a full one, keeping the invite.
	bobJoin := c.next("@bob:globex.test", "m.room.member", sk("@bob:globex.test"), map[string]string{"membership": Join})
	bobJoin.Origin = "globex.test"
	if err := event.Seal(bobJoin); err != nil {
		t.Fatal(err)
	}
	snap := []*event.Event{create, aliceJoin, power, name, invite, bobJoin}
	for i, e := range snap {
		snap[i] = e.Clone()
	}
	if r := f.apply(&Command{Kind: KindRemoteRoom, RemoteRoom: &RemoteRoom{RoomID: c.room, Events: snap}}); !r[0].OK() {
		t.Fatalf("remote_room: %+v", r[0])
	}
	room, _ = s.Room(c.room)
	if room.Partial || room.Visibility != "private" || room.Creator != "@alice:acme.test" || room.Name != "Secret" {
		t.Fatalf("room after join: %+v", room)
	}
	if m := s.Membership(c.room, "@bob:globex.test").Membership; m != Join {
		t.Fatalf("bob is %q after the join", m)
	}
	if got := s.Joined(c.room); len(got) != 2 {
		t.Fatalf("joined: %v", got)
	}
}

// TestRemoteInviteDeclined: the invitee may leave a partial room (decline); nobody else local may
// change memberships there, and the home org may (withdraw, invite again).
func TestRemoteInviteDeclined(t *testing.T) {
	s := Open()
	defer s.Close()
	f := &fsmT{t: t, s: s}
	c := &chain{t: t, room: "!r2:acme.test", depth: 4, last: "$earlier"}
	invite := c.next("@alice:acme.test", "m.room.member", sk("@bob:globex.test"), map[string]string{"membership": Invite})
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: invite, InviteRoom: true}}); !r[0].OK() {
		t.Fatalf("invite: %+v", r[0])
	}
	local := func(sender, target, membership string, prev string) *event.Event {
		e := &event.Event{RoomID: c.room, Sender: sender, Origin: "globex.test", OriginTS: 10, Type: "m.room.member",
			StateKey: sk(target), Content: []byte(`{"membership":"` + membership + `"}`), PrevEvents: []string{prev}, Depth: 6}
		if err := event.Seal(e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: local("@carol:globex.test", "@bob:globex.test", Leave, invite.EventID)}}); r[0].OK() {
		t.Fatal("carol declined bob's invite")
	}
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: local("@bob:globex.test", "@bob:globex.test", Join, invite.EventID)}}); r[0].OK() {
		t.Fatal("bob joined locally without the home org")
	}
	decline := local("@bob:globex.test", "@bob:globex.test", Leave, invite.EventID)
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: decline}}); !r[0].OK() {
		t.Fatalf("decline refused: %+v", r[0])
	}
	if m := s.Membership(c.room, "@bob:globex.test"); m.Membership != Leave || m.Prev != Invite {
		t.Fatalf("bob after declining: %+v", m)
	}
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: local("@bob:globex.test", "@bob:globex.test", Leave, decline.EventID)}}); r[0].OK() {
		t.Fatal("declined twice")
	}
	again := c.next("@alice:acme.test", "m.room.member", sk("@bob:globex.test"), map[string]string{"membership": Invite})
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: again, InviteRoom: true}}); !r[0].OK() {
		t.Fatalf("second invite: %+v", r[0])
	}
	if m := s.Membership(c.room, "@bob:globex.test").Membership; m != Invite {
		t.Fatalf("bob is %q after the second invite", m)
	}
}
