package main

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node/client"
)

// TestFederationLongGapRepaired: eight transactions in a row are lost while globex is down;
// the next event builds on the last of them, and globex fetches all eight from acme, which walks
// the chain back for it. Until 2027-01 each get_missing_events round fetched one event and the
// repair stopped after five, so three messages stayed missing at globex for good.
func TestFederationLongGapRepaired(t *testing.T) {
	g := startGapRoom(t)
	globex, alice, room := g.globex, g.alice, g.room
	want := []string{"before the gap"}
	for i := range 8 {
		body := fmt.Sprintf("lost in transit %d", i+1)
		if _, err := alice.Send(ctx(t), room, fmt.Sprintf("g%d", i+1), body); err != nil {
			t.Fatal(err)
		}
		want = append(want, body)
	}
	loseMessages(t, vhostURL(t, g.vhost), federation.InboxQueue("globex.test"), want[1:]...)
	globex.node.start()
	waitLeader(t, globex.node)
	bob := dial(t, globex.node, g.bobToken)
	if _, err := alice.Send(ctx(t), room, "g9", "after the gap"); err != nil {
		t.Fatal(err)
	}
	want = append(want, "after the gap")
	waitMessages(t, bob, room, strings.Join(want, "|"), 30*time.Second)
}

// TestFederationGapRepairedThroughAThirdOrg: in acme's room with globex and initech, acme is
// down and loses bob's message (globex's transaction to it); carol of initech then answers bob,
// so her event builds on his. Back, acme fetches bob's event from initech, the org that sent
// carol's: an event of a third org, which it verifies against globex's key. Until 2027-01 acme
// dropped it ("initech may not relay events of globex", a rule for transactions) and kept the gap.
func TestFederationGapRepairedThroughAThirdOrg(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test", "initech.test")
	acme := orgs[0]
	aliceToken := register(t, acme.node, "alice")
	alice := dial(t, acme.node, aliceToken)
	bob := dial(t, orgs[1].node, register(t, orgs[1].node, "bob"))
	carol := dial(t, orgs[2].node, register(t, orgs[2].node, "carol"))
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": room})
	must(t, carol, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "a1", "alice before"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "alice before")
	waitBody(t, carol, "alice before")
	if code := acme.node.stop(); code != 0 {
		t.Fatalf("acme exited %d", code)
	}
	if _, err := bob.Send(ctx(t), room, "b1", "bob while acme is down"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, carol, "bob while acme is down")
	loseMessages(t, vhost, federation.InboxQueue("acme.test"), "bob while acme is down")
	if _, err := carol.Send(ctx(t), room, "c1", "carol answers bob"); err != nil {
		t.Fatal(err)
	}
	acme.node.start()
	waitLeader(t, acme.node)
	alice = dial(t, acme.node, aliceToken)
	waitMessages(t, alice, room, "alice before|bob while acme is down|carol answers bob", 30*time.Second)
}

// TestFederationLargeMessagesCrossInBoundedTransactions: acme builds a backlog of 40 messages
// of 30 KiB for globex (globex's inbox is unbound, so the relay retries), then the inbox is
// bound again. The backlog leaves in transactions under the 1 MiB the receiver accepts, and
// every message arrives. Until 2027-01 it left as one transaction of 1.2 MiB, which globex
// dead-lettered (M_TOO_LARGE) after acme's cursor had moved past it: 40 messages lost.
func TestFederationLargeMessagesCrossInBoundedTransactions(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	alice := dial(t, orgs[0].node, register(t, orgs[0].node, "alice"))
	bob := dial(t, orgs[1].node, register(t, orgs[1].node, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "l0", "before the backlog"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "before the backlog")

	ch := amqpChannel(t, vhost)
	inbox := federation.InboxQueue("globex.test")
	if err := ch.QueueUnbind(inbox, "globex.test", federation.ExchangeFederation, nil); err != nil {
		t.Fatal(err)
	}
	want := []string{"before the backlog"}
	for i := range 40 {
		body := fmt.Sprintf("%02d %s", i, strings.Repeat("x", 30<<10))
		if _, err := alice.Send(ctx(t), room, fmt.Sprintf("l%d", i+1), body); err != nil {
			t.Fatal(err)
		}
		want = append(want, body)
	}
	if err := ch.QueueBind(inbox, "globex.test", federation.ExchangeFederation, false, nil); err != nil {
		t.Fatal(err)
	}
	// Compared by their first words: the bodies themselves would make an unreadable failure.
	short := func(b string) string { return strings.TrimSuffix(b, " "+strings.Repeat("x", 30<<10)) }
	for i := range want {
		want[i] = short(want[i])
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var got []string
		for _, e := range allEvents(t, bob, room) {
			if e["type"] == "m.room.message" {
				if _, stored := e["stream_pos"]; stored {
					got = append(got, short(bodyOf(e)))
				}
			}
		}
		if strings.Join(got, "|") == strings.Join(want, "|") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("globex stored %d of %d messages: %q", len(got), len(want), got)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if reasons := dlqNow(t, ch); len(reasons) > 0 {
		t.Fatalf("dead letters: %v", reasons)
	}
}

// loseMessages takes messages off queue (acked: gone) until it saw every one of bodies in them,
// as a broker that loses transactions would; it loses whatever else it meets (presence).
func loseMessages(t *testing.T, amqpURL, queue string, bodies ...string) {
	t.Helper()
	takeMessages(t, amqpURL, queue, bodies...)
}

// dlqNow takes what the dead-letter queue holds now and returns the reasons.
func dlqNow(t *testing.T, ch *amqp091.Channel) []string {
	t.Helper()
	var reasons []string
	for {
		d, ok, err := ch.Get(federation.QueueDLQ, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return reasons
		}
		reason, _ := d.Headers["x-parley-error"].(string)
		reasons = append(reasons, reason)
	}
}

// vhostURL is the broker URL of the vhost named name.
func vhostURL(t *testing.T, name string) string {
	t.Helper()
	u, err := url.Parse(brokerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}
