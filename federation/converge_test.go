package federation

import (
	"context"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/event"
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

// TestAReturnedOwnStateChangeOlderThanTheRoomsIsDropped: an own state event the home org relays
// back was never committed here when its answer was lost, and may arrive after the home org
// changed that state again (or after this org fetched the room as the home org holds it now, a
// lost join's recovery): applied, the older event would undo the newer state here only, leaving
// a user joined on one org and gone on the other. It is dropped; one newer than the room's
// state for that key is taken.
func TestAReturnedOwnStateChangeOlderThanTheRoomsIsDropped(t *testing.T) {
	orgs := startTestOrgs(t, testVhost(t), "acme.test", "globex.test")
	acme, globex := orgs["acme.test"], orgs["globex.test"]
	const alice, bob = "@alice:acme.test", "@bob:globex.test"
	globex.register(t, bob)
	room := acme.createRoom(t, alice, "public")
	before, ok := acme.store().Room(room) // the room as it was before bob's join
	if !ok {
		t.Fatal("acme does not hold its room")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := globex.svc.Join(ctx, bob, room); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "bob joined on globex", func() bool { return globex.membership(room, bob) == state.Join })
	// acme's later messages and a kick of bob, which globex applies as relayed.
	for _, body := range []string{"one", "two"} {
		acme.send(t, room, alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": body})
	}
	kicked := bob
	kick := acme.send(t, room, alice, "m.room.member", &kicked, map[string]string{"membership": state.Leave})
	waitFor(t, 15*time.Second, "the kick on globex", func() bool { return globex.has(kick.EventID) })

	own := func(r *state.Room, membership string) *event.Event {
		k := bob
		e := globex.newEvent(t, r, bob, "m.room.member", &k, map[string]string{"membership": membership})
		if err := globex.svc.opts.Keys.Sign(e, globex.name); err != nil {
			t.Fatal(err)
		}
		return e
	}
	// A join of bob's from before the kick whose answer was lost, relayed back only now.
	if err := globex.svc.checkReturned(acme.name, own(before, state.Join)); err == nil {
		t.Fatal("globex takes back bob's join from before his kick: it would join him again here only")
	}
	now, _ := globex.store().Room(room)
	if err := globex.svc.checkReturned(acme.name, own(now, state.Leave)); err != nil {
		t.Fatalf("a returned leave newer than the room's state: %v", err)
	}
}
