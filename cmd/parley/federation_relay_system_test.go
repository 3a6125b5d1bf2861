package main

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/node/client"
)

// TestFederationRelaysByTheMembershipOfTheCommit: events go to the orgs that had a joined
// member when they were committed, not when the relay gets to them. While acme cannot reach the
// broker, alice sends three messages and then kicks globex's only member; once the broker is
// back, globex gets the messages and then the kick, in order. Deciding by the membership at relay time sent globex the kick alone, and the gap repair
// was refused because globex had no member left: the messages were lost there.
func TestFederationRelaysByTheMembershipOfTheCommit(t *testing.T) {
	vhost := freshVhost(t)
	vh := vhostName(t, vhost)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "w0", "while globex was there"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "while globex was there")

	// The broker refuses every connection of the vhost, and drops the ones it has.
	rabbitmqctl(t, "set_vhost_limits", "--vhost", vh, `{"max-connections": 0}`)
	rabbitmqctl(t, "close_all_connections", "--vhost", vh, "parley relay test")
	t.Cleanup(func() { _ = exec.Command("rabbitmqctl", "clear_vhost_limits", "--vhost", vh).Run() })
	for i := 1; i <= 3; i++ {
		if _, err := alice.Send(ctx(t), room, fmt.Sprintf("w%d", i), fmt.Sprintf("sent while acme was cut off %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	must(t, alice, client.Frame{"op": "kick", "room_id": room, "user_id": "@bob:globex.test", "reason": "done"})
	rabbitmqctl(t, "clear_vhost_limits", "--vhost", vh)

	// globex applies them in order while bob is still joined there, so bob is pushed each,
	// and the kick last. (A member who left cannot page the history, so the pushes tell.)
	want := "sent while acme was cut off 1|sent while acme was cut off 2|sent while acme was cut off 3|kick"
	var got []string
	timeout := time.After(60 * time.Second)
	for len(got) == 0 || got[len(got)-1] != "kick" {
		select {
		case f, ok := <-bob.Pushes():
			if !ok {
				t.Fatalf("bob's connection closed; pushed so far: %q", strings.Join(got, "|"))
			}
			if f["op"] != "event" {
				continue
			}
			e := f["event"].(map[string]any)
			switch {
			case e["type"] == "m.room.message":
				got = append(got, bodyOf(e))
			case e["type"] == "m.room.member" && e["state_key"] == "@bob:globex.test" && e["sender"] == "@alice:acme.test":
				got = append(got, "kick")
			}
		case <-timeout:
			t.Fatalf("bob was pushed %q, want %q", strings.Join(got, "|"), want)
		}
	}
	if strings.Join(got, "|") != want {
		t.Fatalf("bob was pushed %q, want %q", strings.Join(got, "|"), want)
	}
}

// TestFederationRequestToAnOrgWithoutInbox: requests are published mandatory and confirmed, as
// every message of the contract: one to a peer whose inbox the broker does not have (never
// started, or its queue deleted) fails at once with M_UNAVAILABLE, instead of after the 15 s
// the requester waits for an answer.
func TestFederationRequestToAnOrgWithoutInbox(t *testing.T) {
	vhost := freshVhost(t)
	vh := vhostName(t, vhost)
	orgs := startOrgs(t, vhost, "acme.test", "ghost.test")
	acme, ghost := orgs[0], orgs[1]
	if code := ghost.node.stop(); code != 0 {
		t.Fatalf("ghost exited %d", code)
	}
	rabbitmqctl(t, "delete_queue", "-p", vh, "parley.fed.ghost.test")
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	start := time.Now()
	_, err := alice.Request(ctx(t), client.Frame{"op": "join", "room": "#anything:ghost.test"})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != "M_UNAVAILABLE" {
		t.Fatalf("join of a room of an org without inbox: %v, want M_UNAVAILABLE", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("M_UNAVAILABLE after %v: the request waited for an answer that could not come", d)
	}
	t.Logf("M_UNAVAILABLE after %v: %s", time.Since(start).Round(time.Millisecond), ce.Message)
}
