package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node/client"
)

// System tests of remote membership flows across orgs (real binaries, real RabbitMQ, a fresh
// vhost per test), with the helpers of federation_system_test.go and
// federation_invite_system_test.go.

// memberEvents counts user's m.room.member events of room, by membership, as c sees them.
func memberEvents(t *testing.T, c *client.Conn, room, user string) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, e := range allEvents(t, c, room) {
		if e["type"] != "m.room.member" || e["state_key"] != user {
			continue
		}
		content, _ := e["content"].(map[string]any)
		m, _ := content["membership"].(string)
		n[m]++
	}
	return n
}

// TestFederationRemoteJoinRetriedAfterLostAnswer: bob of globex (3 nodes) joins a public room of
// acme; acme commits his join, but globex cannot commit the answer (its followers are down,
// so the join's outcome is lost to bob, as when globex's leader changes mid-join or acme's
// answer comes too late). bob retries `join` on globex's next leader: he is joined, and both
// orgs show exactly one join of his (the retry used to commit a second join event on acme).
func TestFederationRemoteJoinRetriedAfterLostAnswer(t *testing.T) {
	vhost := freshVhost(t)
	dir := t.TempDir()
	pubs := map[string]string{}
	for _, o := range []string{"acme.test", "globex.test"} {
		k, err := federation.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		pubs[o] = k.PublicKeyString()
		if err := federation.WriteNewKeyFile(filepath.Join(dir, o+".key"), k); err != nil {
			t.Fatal(err)
		}
	}
	fedYAML := func(self, peer string) string {
		return fmt.Sprintf("amqp:\n  url: %q\nfederation:\n  key_file: %q\n  peers:\n    - {org: %s, public_key: %q}\n",
			vhost, filepath.Join(dir, self+".key"), peer, pubs[peer])
	}
	globexNodes := startClusterWith(t, 3, fedYAML("globex.test", "acme.test"), func(_ int, p *proc) {
		p.env = append(filterEnv(nodeEnv(p, "sys-secret"), "PARLEY_ORG="), "PARLEY_ORG=globex.test")
	})
	leader := waitLeader(t, globexNodes...)
	acme := &proc{t: t, id: "acme", http: freeAddr(t), raft: freeAddr(t), dir: t.TempDir()}
	cfg := filepath.Join(dir, "acme.yaml")
	if err := os.WriteFile(cfg, []byte("org: acme.test\n"+fedYAML("acme.test", "globex.test")), 0o600); err != nil {
		t.Fatal(err)
	}
	acme.args = []string{"--config", cfg}
	acme.env = filterEnv(nodeEnv(acme, ""), "PARLEY_ORG=", "PARLEY_CLUSTER_SECRET=")
	acme.start()
	t.Cleanup(func() {
		acme.stop()
		if t.Failed() {
			t.Logf("--- log of acme ---\n%s", acme.logs())
		}
	})
	waitLeader(t, acme)

	alice := dial(t, acme, register(t, acme, "alice"))
	bobToken := register(t, leader, "bob")
	bob := dial(t, leader, bobToken)
	const bobID = "@bob:globex.test"
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)

	// Stop globex's followers: its leader can still ask acme, but cannot commit the answer.
	var followers []*proc
	for _, p := range globexNodes {
		if p != leader {
			p.kill9()
			followers = append(followers, p)
		}
	}
	jctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	_, err := bob.Request(jctx, client.Frame{"op": "join", "room": room})
	cancel()
	t.Logf("first join: %v", err)
	if err == nil {
		t.Fatal("join succeeded without a quorum on globex")
	}
	// acme committed the join all the same.
	waitPush(t, alice, "bob's first join on acme", isMember(room, bobID, "join"))
	// The old leader goes for good, so the join's uncommitted entry in its log never commits:
	// globex lost the outcome of the join, acme has it.
	leader.kill9()
	for _, p := range followers {
		p.start()
	}
	next := waitLeader(t, followers...)

	// bob retries on globex's new leader.
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := client.Dial(ctx(t), next.wsURL(), bobToken, 1<<16)
		if err == nil {
			_, err = c.Request(ctx(t), client.Frame{"op": "join", "room": room})
			t.Logf("retried join: %v", err)
			if err == nil {
				bob = c
				break
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob's retried join: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Cleanup(bob.Close)
	if m := roomMembership(t, bob, room); m != "join" {
		t.Fatalf("bob's rooms show %q after the retried join", m)
	}
	if _, err := alice.Send(ctx(t), room, "a1", "after the retry"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, bob, room, "after the retry", 30*time.Second)
	if n := memberEvents(t, alice, room, bobID); n["join"] != 1 {
		t.Fatalf("acme shows bob's membership events %v, want one join", n)
	}
	if n := memberEvents(t, bob, room, bobID); n["join"] != 1 {
		t.Fatalf("globex shows bob's membership events %v, want one join", n)
	}
}

// memberSeq is the memberships of user's m.room.member events of room, in the order c's
// history gives them.
func memberSeq(t *testing.T, c *client.Conn, room, user string) string {
	t.Helper()
	var seq []string
	for _, e := range allEvents(t, c, room) {
		if e["type"] != "m.room.member" || e["state_key"] != user {
			continue
		}
		content, _ := e["content"].(map[string]any)
		m, _ := content["membership"].(string)
		seq = append(seq, m)
	}
	return strings.Join(seq, ",")
}

// waitSeq waits (bounded) until c's history of room shows user's memberships as want.
func waitSeq(t *testing.T, c *client.Conn, who, room, user, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := memberSeq(t, c, room, user)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s shows %s's memberships %q, want %q", who, user, got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestFederationRemoteLeaveRejoinKickBan: bob of globex joins a public room of acme, leaves,
// rejoins, is kicked, rejoins and is banned; each membership change shows once and in order on
// both orgs, bob's org has the room's messages from each join on, and a banned bob's join is
// refused with M_FORBIDDEN.
func TestFederationRemoteLeaveRejoinKickBan(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	const bobID = "@bob:globex.test"
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)

	must(t, bob, client.Frame{"op": "join", "room": room})
	waitPush(t, alice, "bob's join", isMember(room, bobID, "join"))
	if _, err := alice.Send(ctx(t), room, "m1", "one"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "one")
	must(t, bob, client.Frame{"op": "leave", "room_id": room})
	waitPush(t, alice, "bob's leave", isMember(room, bobID, "leave"))
	if m := roomMembership(t, bob, room); m != "" {
		t.Fatalf("bob's rooms show %q after leaving", m)
	}
	if _, err := alice.Send(ctx(t), room, "m2", "two"); err != nil { // while bob is out
		t.Fatal(err)
	}
	must(t, bob, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "m3", "three"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "three")
	waitSeq(t, alice, "acme", room, bobID, "join,leave,join")
	waitSeq(t, bob, "globex", room, bobID, "join,leave,join")

	must(t, alice, client.Frame{"op": "kick", "room_id": room, "user_id": bobID})
	waitPush(t, bob, "bob's kick", isMember(room, bobID, "leave"))
	if m := roomMembership(t, bob, room); m != "" {
		t.Fatalf("bob's rooms show %q after the kick", m)
	}
	must(t, bob, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "m4", "four"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "four")
	waitSeq(t, bob, "globex", room, bobID, "join,leave,join,leave,join")
	must(t, alice, client.Frame{"op": "ban", "room_id": room, "user_id": bobID})
	waitPush(t, bob, "bob's ban", isMember(room, bobID, "ban"))
	if _, err := bob.Request(ctx(t), client.Frame{"op": "join", "room": room}); errCode(err) != "M_FORBIDDEN" || !strings.Contains(err.Error(), "banned") {
		t.Fatalf("banned bob's join: %v, want M_FORBIDDEN saying he is banned", err)
	}
	const want = "join,leave,join,leave,join,ban"
	waitSeq(t, alice, "acme", room, bobID, want)
	if m := roomMembership(t, bob, room); m != "" {
		t.Fatalf("bob's rooms show %q after the ban", m)
	}
}

// TestFederationRemoteInviteWithdrawnThenRenewed: alice withdraws bob's invite (kick); bob's
// rooms no longer show the room, nor sync an invite; a new invite shows again and bob joins it,
// getting the room's history and name; joining it again by alias commits nothing more.
func TestFederationRemoteInviteWithdrawnThenRenewed(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	const bobID = "@bob:globex.test"
	room := must(t, alice, client.Frame{"op": "create_room", "name": "Quiet", "visibility": "private", "alias": "quiet"})["room_id"].(string)
	must(t, alice, client.Frame{"op": "invite", "room_id": room, "user_id": bobID})
	waitPush(t, bob, "bob's invite", isMember(room, bobID, "invite"))
	must(t, alice, client.Frame{"op": "kick", "room_id": room, "user_id": bobID})
	waitPush(t, bob, "the invite withdrawn", isMember(room, bobID, "leave"))
	if m := roomMembership(t, bob, room); m != "" {
		t.Fatalf("the withdrawn invite's room is in bob's rooms as %q", m)
	}
	if _, err := bob.Request(ctx(t), client.Frame{"op": "join", "room": "#quiet:acme.test"}); errCode(err) != "M_FORBIDDEN" {
		t.Fatalf("join after the invite was withdrawn: %v", err)
	}
	if _, err := alice.Send(ctx(t), room, "m1", "before the second invite"); err != nil {
		t.Fatal(err)
	}
	must(t, alice, client.Frame{"op": "invite", "room_id": room, "user_id": bobID})
	waitPush(t, bob, "bob's second invite", isMember(room, bobID, "invite"))
	if m := roomMembership(t, bob, room); m != "invite" {
		t.Fatalf("bob's rooms show %q after the second invite", m)
	}
	if got := must(t, bob, client.Frame{"op": "join", "room": "#quiet:acme.test"})["room_id"]; got != room {
		t.Fatalf("join by alias gave %v", got)
	}
	waitMessages(t, bob, room, "before the second invite", 30*time.Second)
	// Joining again by alias, joined already, changes nothing on either org.
	must(t, bob, client.Frame{"op": "join", "room": "#quiet:acme.test"})
	for _, r := range must(t, bob, client.Frame{"op": "rooms"})["rooms"].([]any) {
		if m := r.(map[string]any); m["room_id"] == room && (m["name"] != "Quiet" || m["membership"] != "join" || m["alias"] != "#quiet:acme.test") {
			t.Fatalf("room on globex: %v", m)
		}
	}
	waitSeq(t, alice, "acme", room, bobID, "invite,leave,invite,join")
	waitSeq(t, bob, "globex", room, bobID, "invite,leave,invite,join")
}

// TestFederationRemoteAcceptWhileHomeDown: bob accepts alice's invite while acme is down: he gets
// M_UNAVAILABLE and keeps his invite, nothing changed on either org; once acme is back his
// retry joins him, once.
func TestFederationRemoteAcceptWhileHomeDown(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	aliceToken := register(t, acme.node, "alice")
	alice := dial(t, acme.node, aliceToken)
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	const bobID = "@bob:globex.test"
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "private", "invite": []string{bobID}})["room_id"].(string)
	waitPush(t, bob, "bob's invite", isMember(room, bobID, "invite"))

	acme.node.stop()
	if _, err := bob.Request(ctx(t), client.Frame{"op": "join", "room": room}); errCode(err) != "M_UNAVAILABLE" {
		t.Fatalf("join while acme is down: %v", err)
	}
	if m := roomMembership(t, bob, room); m != "invite" {
		t.Fatalf("bob's rooms show %q after the failed join", m)
	}
	acme.node.start()
	waitLeader(t, acme.node)
	alice = dial(t, acme.node, aliceToken)
	must(t, bob, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "m1", "back"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "back")
	waitSeq(t, alice, "acme", room, bobID, "invite,join")
	waitSeq(t, bob, "globex", room, bobID, "invite,join")
}
