package node

import (
	"slices"
	"testing"
)

// TestSyncAfterTwoMembershipChangesKeepsWhatCameBeforeTheLeave: a user who left a room (or was
// kicked or banned) and then had a second membership change (a ban after the leave, an unban
// after the ban, an invite after the leave) still gets, in a sync from before their leaving,
// what happened up to it, as docs/protocol.md promises for rooms left since. The state kept only
// the membership just before the last change, so such a user counted as never joined and got
// their own latest membership event alone: the message and the leave they were pushed live
// went missing from the sync.
func TestSyncAfterTwoMembershipChangesKeepsWhatCameBeforeTheLeave(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		leave  func(m *members, room string) // ends bob's join
		first  string                        // bob's membership after it
		second func(m *members, room string) // the change after it
		last   string                        // bob's membership at the end
	}{
		{"leave then ban",
			func(m *members, room string) { m.bob.ok(map[string]any{"op": "leave", "room_id": room}) }, "leave",
			func(m *members, room string) {
				m.alice.ok(map[string]any{"op": "ban", "room_id": room, "user_id": m.bob.user})
			}, "ban"},
		{"ban then unban",
			func(m *members, room string) {
				m.alice.ok(map[string]any{"op": "ban", "room_id": room, "user_id": m.bob.user})
			}, "ban",
			func(m *members, room string) {
				m.alice.ok(map[string]any{"op": "unban", "room_id": room, "user_id": m.bob.user})
			}, "leave"},
		{"leave then invite",
			func(m *members, room string) { m.bob.ok(map[string]any{"op": "leave", "room_id": room}) }, "leave",
			func(m *members, room string) {
				m.alice.ok(map[string]any{"op": "invite", "room_id": room, "user_id": m.bob.user})
			}, "invite"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := setup(t, nil)
			room := m.publicRoom(t, m.bob)
			since := m.bob.ok(map[string]any{"op": "sync"})["next"]
			msg := m.alice.send(room, "m1", "before the leave")
			tc.leave(m, room)
			waitMember(t, m.alice, room, m.bob.user, tc.first)
			tc.second(m, room)
			waitMember(t, m.alice, room, m.bob.user, tc.last)

			s := m.bob.ok(map[string]any{"op": "sync", "since": since})
			r, _ := s["rooms"].(map[string]any)[room].(map[string]any)
			if r == nil {
				t.Fatalf("the room is missing from the sync: %v", s)
			}
			var ids, memberships []string
			for _, e := range r["events"].([]any) {
				ev := e.(map[string]any)
				ids = append(ids, ev["event_id"].(string))
				if ev["type"] == "m.room.member" && ev["state_key"] == m.bob.user {
					memberships = append(memberships, contentOf(ev)["membership"].(string))
				}
			}
			if !slices.Contains(ids, msg) {
				t.Fatalf("the message sent before bob's leave is missing: %v", r["events"])
			}
			if len(memberships) != 2 || memberships[1] != tc.last {
				t.Fatalf("bob's membership events %v, want the one that ended his join and then %s", memberships, tc.last)
			}
		})
	}
}
