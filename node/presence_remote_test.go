package node

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

func TestOrgPresenceExpiry(t *testing.T) {
	p := newOrgPresence()
	now := time.Now()
	ts := now.UnixMilli()
	if !p.set("@bob:b.test", true, time.Minute, ts, now) {
		t.Fatal("first online is not a change")
	}
	if p.set("@bob:b.test", true, time.Minute, ts+1, now) {
		t.Fatal("a refresh counted as a change")
	}
	if !p.online("@bob:b.test") {
		t.Fatal("bob is not online")
	}
	if gone := p.expire(now.Add(30 * time.Second)); len(gone) != 0 {
		t.Fatalf("expired early: %v", gone)
	}
	if gone := p.expire(now.Add(2 * time.Minute)); len(gone) != 1 || gone[0] != "@bob:b.test" {
		t.Fatalf("expire: %v", gone)
	}
	if p.online("@bob:b.test") {
		t.Fatal("bob is still online after his org fell silent")
	}
	if p.set("@bob:b.test", false, time.Minute, ts+2, now) {
		t.Fatal("offline for a user shown offline is not a change")
	}
	// A lapsed entry coming back online is a change.
	p.set("@carol:b.test", true, time.Millisecond, ts, now.Add(-time.Second))
	if !p.set("@carol:b.test", true, time.Minute, ts+1, now) {
		t.Fatal("online after a lapse is not a change")
	}
}

// TestOrgPresenceOutOfOrder: EDUs may overtake each other; an older status never undoes a
// newer one, and an offline entry remembers its time for that.
func TestOrgPresenceOutOfOrder(t *testing.T) {
	p := newOrgPresence()
	now := time.Now()
	if p.set("@bob:b.test", false, time.Minute, 200, now) {
		t.Fatal("offline of an unknown user is not a change")
	}
	if p.set("@bob:b.test", true, time.Minute, 100, now) || p.online("@bob:b.test") {
		t.Fatal("an online sent before the offline turned bob online")
	}
	if !p.set("@bob:b.test", true, time.Minute, 300, now) {
		t.Fatal("a newer online is a change")
	}
	if p.set("@bob:b.test", false, time.Minute, 250, now) || !p.online("@bob:b.test") {
		t.Fatal("an older offline turned bob offline")
	}
	// Once an entry is forgotten, any status goes.
	p.expire(now.Add(2 * time.Minute))
	if !p.set("@bob:b.test", true, time.Minute, 1, now) {
		t.Fatal("online after the entry was forgotten")
	}
}

// TestRemotePresence: an m.presence for a user of another org who shares a room reaches the
// local members as a presence push and shows in members; it lapses without a refresh. Local
// users' own changes go to the presence sender (federation).
func TestRemotePresence(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, ta := n.register("")
	alice := n.dial(ta)
	room := alice.createRoom(map[string]any{"visibility": "public"})
	const bob = "@bob:globex.test"
	// bob's join, as globex's relay would bring it (the room rules do not check signatures).
	r, _ := n.srv.cluster.Store().Room(room)
	key := bob
	join := &event.Event{RoomID: room, Sender: bob, Origin: "globex.test", OriginTS: time.Now().UnixMilli(), Type: "m.room.member",
		StateKey: &key, Content: memberContent(state.Join, nil), PrevEvents: []string{r.LastEventID}, Depth: r.Depth + 1}
	if err := event.Seal(join); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if res, err := n.srv.cluster.Propose(ctx, &state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: join}}); err != nil || !res.OK() {
		t.Fatalf("bob's join: %v %+v", err, res)
	}
	waitMember(t, alice, room, bob, "join")
	presence := func(status string) func(map[string]any) bool {
		return func(m map[string]any) bool {
			return m["op"] == "presence" && m["user_id"] == bob && m["presence"] == status
		}
	}
	if ms := membersOf(alice, room); ms[bob]["presence"] != "offline" {
		t.Fatalf("bob before any presence: %v", ms[bob])
	}
	n.srv.SetRemotePresence(bob, "online", 1, time.Minute)
	alice.nextPush(presence("online"))
	if ms := membersOf(alice, room); ms[bob]["presence"] != "online" {
		t.Fatalf("bob online: %v", ms[bob])
	}
	n.srv.SetRemotePresence(bob, "offline", 2, time.Minute)
	alice.nextPush(presence("offline"))
	// An online that is not refreshed lapses: the org may have crashed.
	n.srv.SetRemotePresence(bob, "online", 3, 50*time.Millisecond)
	alice.nextPush(presence("online"))
	time.Sleep(100 * time.Millisecond)
	n.srv.hub.expireOrgPresence()
	alice.nextPush(presence("offline"))
	if ms := membersOf(alice, room); ms[bob]["presence"] != "offline" {
		t.Fatalf("bob after his online lapsed: %v", ms[bob])
	}

	// Local changes reach the presence sender; other orgs' users' do not.
	var mu sync.Mutex
	var sent []string
	n.srv.SetPresenceSender(func(user, status string) {
		mu.Lock()
		defer mu.Unlock()
		sent = append(sent, user+" "+status)
	})
	_, tc := n.register("carol")
	carol := n.dial(tc)
	carol.close()
	n.srv.SetRemotePresence(bob, "online", 4, time.Minute)
	alice.nextPush(presence("online"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := append([]string(nil), sent...)
		mu.Unlock()
		if len(got) == 2 {
			if got[0] != "@carol:test.local online" || got[1] != "@carol:test.local offline" {
				t.Fatalf("sent %v", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sent %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
