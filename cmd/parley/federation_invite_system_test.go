package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/node/client"
)

// System tests of remote invites and presence EDUs between two orgs (real binaries, real
// RabbitMQ, a fresh vhost per test), with the helpers of federation_system_test.go.

// waitPush waits (bounded) for a push that match accepts and returns it.
func waitPush(t *testing.T, c *client.Conn, what string, match func(client.Frame) bool) client.Frame {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case f, ok := <-c.Pushes():
			if !ok {
				t.Fatalf("connection closed awaiting %s", what)
			}
			if match(f) {
				return f
			}
		case <-timeout:
			t.Fatalf("%s never arrived", what)
		}
	}
}

// isMember matches a pushed m.room.member event of room for user with the given membership.
func isMember(room, user, membership string) func(client.Frame) bool {
	return func(f client.Frame) bool {
		if f["op"] != "event" {
			return false
		}
		e, _ := f["event"].(map[string]any)
		c, _ := e["content"].(map[string]any)
		return e["room_id"] == room && e["type"] == "m.room.member" && e["state_key"] == user && c["membership"] == membership
	}
}

// roomMembership is user's membership of room in their `rooms` list ("" when absent).
func roomMembership(t *testing.T, c *client.Conn, room string) string {
	t.Helper()
	for _, r := range must(t, c, client.Frame{"op": "rooms"})["rooms"].([]any) {
		if m := r.(map[string]any); m["room_id"] == room {
			s, _ := m["membership"].(string)
			return s
		}
	}
	return ""
}

// memberRow is user's row of room's member list as c sees it (nil when absent).
func memberRow(t *testing.T, c *client.Conn, room, user string) map[string]any {
	t.Helper()
	for _, m := range must(t, c, client.Frame{"op": "members", "room_id": room})["members"].([]any) {
		if row := m.(map[string]any); row["user_id"] == user {
			return row
		}
	}
	return nil
}

func errCode(err error) string {
	var ce *client.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	return ""
}

// TestFederationRemoteInviteJoin: alice of acme creates a private room inviting bob of globex
// (create_room's invite list); bob sees the invite (pushed, in rooms, in sync), joins it through
// acme, and they talk both ways.
func TestFederationRemoteInviteJoin(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	const bobID = "@bob:globex.test"

	room := must(t, alice, client.Frame{"op": "create_room", "name": "Secret", "visibility": "private",
		"invite": []string{bobID}})["room_id"].(string)
	if _, err := alice.Send(ctx(t), room, "pre", "before bob joined"); err != nil {
		t.Fatal(err)
	}
	invite := waitPush(t, bob, "bob's invite", isMember(room, bobID, "invite"))
	if e := invite["event"].(map[string]any); e["sender"] != "@alice:acme.test" || e["origin"] != "acme.test" {
		t.Fatalf("invite event: %v", e)
	}
	if m := roomMembership(t, bob, room); m != "invite" {
		t.Fatalf("bob's rooms show %q for the room, want invite", m)
	}
	synced := must(t, bob, client.Frame{"op": "sync"})["rooms"].(map[string]any)
	sr, ok := synced[room].(map[string]any)
	if !ok {
		t.Fatalf("bob's sync has no entry for the room: %v", synced)
	}
	if evs := sr["events"].([]any); len(evs) != 1 || !isMember(room, bobID, "invite")(client.Frame{"op": "event", "event": evs[0]}) {
		t.Fatalf("bob's sync of the room: %v", sr)
	}
	// An invitee cannot read or post before joining.
	if _, err := bob.Send(ctx(t), room, "early", "too early"); errCode(err) != "M_FORBIDDEN" {
		t.Fatalf("send before joining: %v", err)
	}

	joined := must(t, bob, client.Frame{"op": "join", "room": room})
	if joined["room_id"] != room {
		t.Fatalf("bob joined %v, want %s", joined["room_id"], room)
	}
	waitPush(t, alice, "bob's join on acme", isMember(room, bobID, "join"))
	if m := roomMembership(t, bob, room); m != "join" {
		t.Fatalf("bob's rooms show %q after joining", m)
	}
	// The room came with its state: bob's node knows its name now.
	for _, r := range must(t, bob, client.Frame{"op": "rooms"})["rooms"].([]any) {
		if m := r.(map[string]any); m["room_id"] == room && m["name"] != "Secret" {
			t.Fatalf("room on globex: %v", m)
		}
	}
	found := false
	for _, e := range allEvents(t, bob, room) {
		if bodyOf(e) == "before bob joined" {
			found = true
		}
	}
	if !found {
		t.Fatal("bob does not see the room's history from before his join")
	}
	if _, err := bob.Send(ctx(t), room, "b1", "hello from globex"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, alice, "hello from globex")
	if _, err := alice.Send(ctx(t), room, "a1", "hello from acme"); err != nil {
		t.Fatal(err)
	}
	if got := waitBody(t, bob, "hello from acme"); got["sender"] != "@alice:acme.test" {
		t.Fatalf("bob got %v", got)
	}
	if row := memberRow(t, alice, room, bobID); row == nil || row["membership"] != "join" {
		t.Fatalf("bob on acme's member list: %v", row)
	}
}

// TestFederationRemoteInviteDeclined: bob of globex declines alice's invite (leave); acme
// records the decline, and bob can no longer join the private room.
func TestFederationRemoteInviteDeclined(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	const bobID = "@bob:globex.test"

	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "private"})["room_id"].(string)
	must(t, alice, client.Frame{"op": "invite", "room_id": room, "user_id": bobID})
	waitPush(t, bob, "bob's invite", isMember(room, bobID, "invite"))
	if row := memberRow(t, alice, room, bobID); row == nil || row["membership"] != "invite" {
		t.Fatalf("bob on acme before declining: %v", row)
	}

	must(t, bob, client.Frame{"op": "leave", "room_id": room})
	// acme, the home org, has it: alice is pushed bob's leave and the member list shows it.
	waitPush(t, alice, "bob's decline on acme", isMember(room, bobID, "leave"))
	if row := memberRow(t, alice, room, bobID); row == nil || row["membership"] != "leave" {
		t.Fatalf("bob on acme after declining: %v", row)
	}
	if m := roomMembership(t, bob, room); m != "" {
		t.Fatalf("the declined room is still in bob's rooms as %q", m)
	}
	// Declining twice, or joining the private room afterwards, is refused.
	if _, err := bob.Request(ctx(t), client.Frame{"op": "leave", "room_id": room}); errCode(err) != "M_FORBIDDEN" {
		t.Fatalf("second leave: %v", err)
	}
	if _, err := bob.Request(ctx(t), client.Frame{"op": "join", "room": room}); errCode(err) != "M_FORBIDDEN" {
		t.Fatalf("join after declining: %v", err)
	}
	// A new invite works again, and this time bob accepts.
	must(t, alice, client.Frame{"op": "invite", "room_id": room, "user_id": bobID})
	waitPush(t, bob, "bob's second invite", isMember(room, bobID, "invite"))
	must(t, bob, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "a1", "welcome back"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "welcome back")
}

// TestFederationRemoteInviteRefused: users of an org that is not a peer cannot be invited, nor
// its rooms joined (M_FORBIDDEN, as bridges get: that org stays no peer whatever the client tries;
// until 2026-12-07 M_UNAVAILABLE, which reads as "retry"), nor peers' users invited into a room
// that does not federate (M_FORBIDDEN); a user of a peer org is invited without acme being able
// to check the user exists. A peer's refusal reaches the client with its code in the code field
// alone (before, also in front of the message: "M_FORBIDDEN: the room is private: …").
func TestFederationRemoteInviteRefused(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "private"})["room_id"].(string)

	if _, err := alice.Request(ctx(t), client.Frame{"op": "invite", "room_id": room, "user_id": "@dave:initech.test"}); errCode(err) != "M_FORBIDDEN" {
		t.Fatalf("invite of a non-peer's user: %v", err)
	}
	if _, err := alice.Request(ctx(t), client.Frame{"op": "create_room", "invite": []string{"@dave:initech.test"}}); errCode(err) != "M_FORBIDDEN" {
		t.Fatalf("create_room inviting a non-peer's user: %v", err)
	}
	for _, r := range []string{"!AAAAAAAAAAAAAAAA:initech.test", "#lobby:initech.test"} {
		if _, err := alice.Request(ctx(t), client.Frame{"op": "join", "room": r}); errCode(err) != "M_FORBIDDEN" || !strings.Contains(err.Error(), "not a federation peer") {
			t.Fatalf("join of %s, a room of a non-peer: %v", r, err)
		}
	}
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	private := must(t, bob, client.Frame{"op": "create_room", "visibility": "private"})["room_id"].(string)
	_, err := alice.Request(ctx(t), client.Frame{"op": "join", "room": private})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != "M_FORBIDDEN" || strings.HasPrefix(ce.Message, "M_") || !strings.Contains(ce.Message, "invite") {
		t.Fatalf("join of a peer's private room: %#v, want M_FORBIDDEN with the peer's message alone", err)
	}
	local := must(t, alice, client.Frame{"op": "create_room", "federate": false})["room_id"].(string)
	if _, err := alice.Request(ctx(t), client.Frame{"op": "invite", "room_id": local, "user_id": "@bob:globex.test"}); errCode(err) != "M_FORBIDDEN" {
		t.Fatalf("invite into a room that does not federate: %v", err)
	}
	if _, err := alice.Request(ctx(t), client.Frame{"op": "create_room", "federate": false, "invite": []string{"@bob:globex.test"}}); errCode(err) != "M_FORBIDDEN" {
		t.Fatalf("create_room without federation inviting a peer's user: %v", err)
	}
	// Nobody is called nobody on globex: acme cannot know, so the invite is made (globex drops it).
	must(t, alice, client.Frame{"op": "invite", "room_id": room, "user_id": "@nobody:globex.test"})
	if row := memberRow(t, alice, room, "@nobody:globex.test"); row == nil || row["membership"] != "invite" {
		t.Fatalf("the unknown peer user on acme's member list: %v", row)
	}
}

// TestFederationPresence: bob of globex shares a room with alice of acme; his coming online and
// going offline reach alice as presence pushes, and acme's member list shows his presence.
func TestFederationPresence(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	const bobID = "@bob:globex.test"
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bobToken := register(t, globex.node, "bob")
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)

	bob := dial(t, globex.node, bobToken)
	must(t, bob, client.Frame{"op": "join", "room": room})
	waitPush(t, alice, "bob's join", isMember(room, bobID, "join"))
	isPresence := func(status string) func(client.Frame) bool {
		return func(f client.Frame) bool {
			return f["op"] == "presence" && f["user_id"] == bobID && f["presence"] == status
		}
	}
	presenceOnAcme := func() any {
		row := memberRow(t, alice, room, bobID)
		if row == nil {
			t.Fatal("bob is not on acme's member list")
		}
		return row["presence"]
	}
	// Bob was online before he shared a room with anyone of acme, so acme heard nothing yet:
	// his last connection closing is the first word.
	bob.Close()
	waitPush(t, alice, "bob going offline", isPresence("offline"))
	if p := presenceOnAcme(); p != "offline" {
		t.Fatalf("bob's presence on acme while disconnected: %v", p)
	}

	bob = dial(t, globex.node, bobToken)
	waitPush(t, alice, "bob coming online", isPresence("online"))
	if p := presenceOnAcme(); p != "online" {
		t.Fatalf("bob's presence on acme while connected: %v", p)
	}
	// A second connection changes nothing; closing one of two neither.
	second := dial(t, globex.node, bobToken)
	second.Close()
	quiet := time.After(2 * time.Second)
	for waiting := true; waiting; {
		select {
		case f := <-alice.Pushes():
			if f["op"] == "presence" && f["user_id"] == bobID {
				t.Fatalf("closing one of bob's two connections reached acme: %v", f)
			}
		case <-quiet:
			waiting = false
		}
	}
	if p := presenceOnAcme(); p != "online" {
		t.Fatalf("bob's presence on acme with one of two connections closed: %v", p)
	}

	bob.Close()
	waitPush(t, alice, "bob going offline again", isPresence("offline"))
	if p := presenceOnAcme(); p != "offline" {
		t.Fatalf("bob's presence on acme after his last connection closed: %v", p)
	}
}
