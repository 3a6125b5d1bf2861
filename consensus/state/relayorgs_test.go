package state

import (
	"fmt"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// Each event of a federating room records, in the stream, the orgs with a joined member when
// it was committed: the orgs the relay sends it to. A later leave does not take back what was
// committed before it, also within one log entry; a room that does not federate records none.
func TestStreamRecordsTheOrgsAnEventGoesTo(t *testing.T) {
	const alice, bob, carol = "@alice:acme.test", "@bob:globex.test", "@carol:initech.test"
	for _, oneEntry := range []bool{false, true} {
		t.Run(fmt.Sprintf("one entry %v", oneEntry), func(t *testing.T) {
			s := Open()
			t.Cleanup(func() { s.Close() })
			f := &fsmT{t: t, s: s}
			c := &chain{t: t, room: "!fed:acme.test"}
			f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: c.room, Events: []*event.Event{
				c.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public", Federate: true}),
				c.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
			}}})
			msg := func(body string) *Command {
				return &Command{Kind: KindEvent, Event: &EventCommand{Event: c.next(alice, "m.room.message", nil,
					map[string]string{"msgtype": "m.text", "body": body}), TxnID: body}}
			}
			member := func(sender, user, membership string) *Command {
				return &Command{Kind: KindEvent, Event: &EventCommand{Event: c.next(sender, "m.room.member", sk(user),
					map[string]string{"membership": membership})}}
			}
			cmds := []*Command{
				member(bob, bob, Join), member(carol, carol, Join),
				msg("m1"),
				member(alice, bob, Leave), // bob is kicked
				msg("m2"),
				member(carol, carol, Leave),
				msg("m3"),
			}
			var results []Result
			if oneEntry {
				results = f.apply(cmds...)
			} else {
				for _, cmd := range cmds {
					results = append(results, f.apply(cmd)...)
				}
			}
			want := [][]string{
				{"acme.test"}, // bob's join: under the membership before it
				{"acme.test", "globex.test"},
				{"acme.test", "globex.test", "initech.test"}, // m1
				{"acme.test", "globex.test", "initech.test"}, // the kick
				{"acme.test", "initech.test"},                // m2
				{"acme.test", "initech.test"},                // carol's leave
				{"acme.test"},                                // m3
			}
			for i, r := range results {
				if !r.OK() {
					t.Fatalf("command %d: %+v", i, r)
				}
				orgs, recorded := s.JoinedOrgsAt(r.StreamPos)
				if !recorded || fmt.Sprint(orgs) != fmt.Sprint(want[i]) {
					t.Errorf("command %d (pos %d): orgs %v (recorded %v), want %v", i, r.StreamPos, orgs, recorded, want[i])
				}
			}
			// StreamAfterOrgs reads the same, with the events.
			n := 0
			err := s.StreamAfterOrgs(results[0].StreamPos-1, 100, func(e *event.Event, orgs []string, recorded bool) bool {
				if e.StreamPos != results[n].StreamPos || !recorded || fmt.Sprint(orgs) != fmt.Sprint(want[n]) {
					t.Errorf("stream %d: %s at %d, orgs %v (recorded %v)", n, e.EventID, e.StreamPos, orgs, recorded)
				}
				n++
				return true
			})
			if err != nil || n != len(want) {
				t.Fatalf("stream read %d events: %v", n, err)
			}
		})
	}

	// A room that does not federate records nothing, and reads as before.
	s, f, room := newPublicRoom(t, alice, "!local:acme.test")
	r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: room.next(alice, "m.room.message", nil,
		map[string]string{"msgtype": "m.text", "body": "hi"}), TxnID: "t"}})[0]
	if orgs, recorded := s.JoinedOrgsAt(r.StreamPos); recorded || orgs != nil {
		t.Fatalf("a local room's event recorded orgs %v", orgs)
	}
	var got []string
	_ = s.StreamAfter(0, 100, func(e *event.Event) bool { got = append(got, e.EventID); return true })
	if len(got) != 3 {
		t.Fatalf("the stream holds %d events, want 3", len(got))
	}
}
