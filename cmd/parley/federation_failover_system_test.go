package main

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node/client"
)

// TestFederationRecoversTopologyAfterBrokerReset: the broker loses the federation topology
// (a broker node reset or replaced by a fresh one: exchanges and queues gone) and drops every
// connection. The nodes reconnect and declare it again: messages flow both ways. Until
// 2026-12-07 the topology was declared once, when a node started: the inbox consumers retried
// a missing queue and the relays a missing exchange forever, and nothing crossed until every
// node was restarted. Only this test's vhost is touched.
func TestFederationRecoversTopologyAfterBrokerReset(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "r0", "before the reset"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "before the reset")

	// The reset: the topology goes, then the connections.
	ch := amqpChannel(t, vhost)
	for _, q := range []string{federation.InboxQueue("acme.test"), federation.InboxQueue("globex.test"), federation.QueueDLQ} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Fatalf("delete queue %s: %v", q, err)
		}
	}
	for _, x := range []string{federation.ExchangeFederation, federation.ExchangeDLX} {
		if err := ch.ExchangeDelete(x, false, false); err != nil {
			t.Fatalf("delete exchange %s: %v", x, err)
		}
	}
	name := vhostName(t, vhost)
	if out, err := exec.Command("rabbitmqctl", "close_all_connections", "-p", name, "broker reset (test)").CombinedOutput(); err != nil {
		t.Fatalf("close connections of %s: %v\n%s", name, err, out)
	}

	if _, err := alice.Send(ctx(t), room, "r1", "after the reset"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Send(ctx(t), room, "r2", "globex after the reset"); err != nil {
		t.Fatal(err)
	}
	// Each org has its own message first: the other's waited for the topology.
	within := 40 * time.Second
	waitMessages(t, bob, room, "before the reset|globex after the reset|after the reset", within)
	waitMessages(t, alice, room, "before the reset|after the reset|globex after the reset", within)

	// The whole topology is back, the dead-letter pair included.
	check := amqpChannel(t, vhost)
	for _, q := range []string{federation.InboxQueue("acme.test"), federation.InboxQueue("globex.test"), federation.QueueDLQ} {
		if _, err := check.QueueDeclarePassive(q, true, false, false, false, nil); err != nil {
			t.Fatalf("queue %s not declared again: %v", q, err)
		}
	}
	if err := check.ExchangeDeclarePassive(federation.ExchangeDLX, amqp091.ExchangeFanout, true, false, false, false, nil); err != nil {
		t.Fatalf("exchange %s not declared again: %v", federation.ExchangeDLX, err)
	}
}

// TestFederationReceiverLeaderKilledMidInbox: globex runs 3 nodes; its leader is killed with
// kill -9 while acme sends to globex, so transactions it took from the inbox, applied or not,
// acked or not, go to the new leader: every message is stored at globex exactly once.
func TestFederationReceiverLeaderKilledMidInbox(t *testing.T) {
	leaderKilledMidFederation(t, false)
}

// TestFederationGapsInManyRoomsAskTheSilentOrgOnce: one transaction of acme brings globex
// events of three rooms, each building on an event globex lost, and acme is down. globex asks
// acme for the first room's events, gets no answer in 10 s, and requeues the transaction
// without asking for the other rooms: acme would not answer those either. Until 2026-12-07 it
// asked room after room, 10 s each, at every probe of the outage, and every org's transactions
// waited behind it meanwhile (30 s here; a peer sharing 20 rooms held the inbox minutes).
func TestFederationGapsInManyRoomsAskTheSilentOrgOnce(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bobToken := register(t, globex.node, "bob")
	bob := dial(t, globex.node, bobToken)
	const rooms = 3
	var ids []string
	for i := range rooms {
		room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
		must(t, bob, client.Frame{"op": "join", "room": room})
		if _, err := alice.Send(ctx(t), room, fmt.Sprintf("b%d", i), fmt.Sprintf("before %d", i)); err != nil {
			t.Fatal(err)
		}
		waitBody(t, bob, fmt.Sprintf("before %d", i))
		ids = append(ids, room)
	}
	if code := globex.node.stop(); code != 0 {
		t.Fatalf("globex exited %d", code)
	}
	inbox := federation.InboxQueue("globex.test")
	send := func(prefix string) map[string]amqp091.Delivery {
		var bodies []string
		for i, room := range ids {
			body := fmt.Sprintf("%s %d", prefix, i)
			if _, err := alice.Send(ctx(t), room, fmt.Sprintf("%s%d", prefix, i), body); err != nil {
				t.Fatal(err)
			}
			bodies = append(bodies, body)
		}
		return takeMessages(t, vhost, inbox, bodies...)
	}
	send("lost")
	after := send("after")
	// The three events in one transaction, as acme's relay sends them when it is behind.
	var pdus []*event.Event
	seen := map[string]bool{}
	for _, d := range after {
		txn, err := federation.DecodeTransaction(d.Body)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range txn.PDUs {
			if !seen[p.EventID] {
				seen[p.EventID] = true
				pdus = append(pdus, p)
			}
		}
	}
	body, err := federation.EncodeSignedTransaction("acme.test", "globex.test", "merged-"+randomSuffix(), acme.keyRaw, pdus)
	if err != nil {
		t.Fatal(err)
	}
	ch := amqpChannel(t, vhost)
	if err := ch.PublishWithContext(ctx(t), federation.ExchangeFederation, "globex.test", true, false, amqp091.Publishing{
		ContentType: "application/json", DeliveryMode: amqp091.Persistent, MessageId: "merged", Type: federation.TypeTxn,
		Body: body}); err != nil {
		t.Fatal(err)
	}
	if code := acme.node.stop(); code != 0 {
		t.Fatalf("acme exited %d", code)
	}
	globex.node.start()
	waitLeader(t, globex.node)
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for !strings.Contains(globex.node.logs(), "missing events not fetched, requeueing") {
		if time.Now().After(deadline) {
			t.Fatalf("globex never requeued the transaction with its gaps:\n%s", globex.node.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(start)
	if n := strings.Count(globex.node.logs(), "could not fetch missing events"); n != 1 {
		t.Fatalf("globex asked the silent acme %d times for one transaction (%v), 10 s each", n, took.Round(time.Second))
	}
	if took > 20*time.Second {
		t.Fatalf("the transaction held globex's inbox %v", took)
	}

	// acme back: the gaps close.
	acme.node.start()
	waitLeader(t, acme.node)
	bob = dial(t, globex.node, bobToken)
	for i, room := range ids {
		waitMessages(t, bob, room, fmt.Sprintf("before %d|lost %d|after %d", i, i, i), 60*time.Second)
	}
}
