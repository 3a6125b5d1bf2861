package federation

import (
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

// TestFederationRemoteJoinConvergesWithoutRetry: bob of globex joins a room of acme; acme commits
// his join, but its answer is never committed on globex (lost, or globex's leader changed), and
// bob never retries. globex still ends up with the room, bob joined, and acme's later messages:
// acme relays bob's join back to globex, and globex, which does not hold the room (or holds it
// only through bob's invite), fetches it from acme. Before, acme never relayed the join to
// globex, and globex dropped acme's later events of a room it did not know (or refused them in
// its partial room) for good, while acme showed bob joined.
func TestFederationRemoteJoinConvergesWithoutRetry(t *testing.T) {
	orgs := startTestOrgs(t, testVhost(t), "acme.test", "globex.test")
	acme, globex := orgs["acme.test"], orgs["globex.test"]
	const alice, bob, carol = "@alice:acme.test", "@bob:globex.test", "@carol:globex.test"
	globex.register(t, bob)
	globex.register(t, carol)

	for _, tc := range []struct {
		name, user, visibility string
		invited                bool // globex holds the room partially, through the user's invite
	}{
		{"unknown room", bob, "public", false},
		{"partial room of an invite", carol, "private", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			room := acme.createRoom(t, alice, tc.visibility)
			if tc.invited {
				user := tc.user
				acme.send(t, room, alice, "m.room.member", &user, map[string]string{"membership": state.Invite})
				waitFor(t, 15*time.Second, "the invite on globex", func() bool { return globex.membership(room, tc.user) == state.Invite })
			}
			join := globex.joinAnswerLost(t, tc.user, room)
			if got := acme.membership(room, tc.user); got != state.Join {
				t.Fatalf("acme: %s is %q in the room, want join", tc.user, got)
			}
			msg := acme.send(t, room, alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hello after the join"})

			waitFor(t, 20*time.Second, "globex to hold the room with the user joined and the later message", func() bool {
				r, ok := globex.store().Room(room)
				return ok && !r.Partial && globex.membership(room, tc.user) == state.Join && globex.has(join.EventID) && globex.has(msg.EventID)
			})
			// And what comes after reaches globex as usual.
			later := acme.send(t, room, alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "and later"})
			waitFor(t, 15*time.Second, "a later message on globex", func() bool { return globex.has(later.EventID) })
		})
	}
}
