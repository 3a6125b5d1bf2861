package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node/client"
)

// TestFederationRequestAnsweredWhileATransactionWaits: globex's inbox holds a transaction of
// initech whose prev_event was lost, and asks initech, which is down, for it (get_missing_events,
// a 10 s wait). Meanwhile alice of acme joins globex's room: make_join and send_join are requests
// to globex's inbox, answered at once. Until 2026-12-07 one handler did both, in order: the join
// took the 10 s (and two orgs with gaps toward each other each waited on the other, their
// requests timed out, and both applied their transactions with the gaps, for good: the next
// test).
func TestFederationRequestAnsweredWhileATransactionWaits(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test", "initech.test")
	acme, globex, initech := orgs[0], orgs[1], orgs[2]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	carol := dial(t, initech.node, register(t, initech.node, "carol"))
	room := must(t, bob, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, carol, client.Frame{"op": "join", "room": room})
	if _, err := carol.Send(ctx(t), room, "c0", "before the gap"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "before the gap")

	// Copies of what is published to globex and to initech.
	ch := amqpChannel(t, vhost)
	toGlobex := spyOn(t, ch, "globex.test")
	toInitech := spyOn(t, ch, "initech.test")

	if code := globex.node.stop(); code != 0 {
		t.Fatalf("globex exited %d", code)
	}
	if _, err := carol.Send(ctx(t), room, "c1", "lost in transit"); err != nil {
		t.Fatal(err)
	}
	loseMessages(t, vhost, federation.InboxQueue("globex.test"), "lost in transit")
	if _, err := carol.Send(ctx(t), room, "c2", "after the gap"); err != nil {
		t.Fatal(err)
	}
	waitSpied(t, toGlobex, "initech's transaction after the gap", func(d amqp091.Delivery) bool {
		return d.Type == federation.TypeTxn && strings.Contains(string(d.Body), `"after the gap"`)
	})
	if code := initech.node.stop(); code != 0 {
		t.Fatalf("initech exited %d", code)
	}
	globex.node.start()
	waitLeader(t, globex.node)
	// globex lacks "lost in transit", which "after the gap" builds on: it asks initech, down,
	// and its transaction worker waits up to 10 s for the answer.
	waitSpied(t, toInitech, "globex's get_missing_events", func(d amqp091.Delivery) bool {
		return d.Type == federation.TypeRequest && strings.Contains(string(d.Body), `"get_missing_events"`)
	})
	start := time.Now()
	joined := must(t, alice, client.Frame{"op": "join", "room": room})
	took := time.Since(start)
	logs := globex.node.logs()
	if joined["room_id"] != room {
		t.Fatalf("joined %v, want %s", joined["room_id"], room)
	}
	if took > 5*time.Second {
		t.Fatalf("the join took %v: globex's requests waited behind the transaction", took)
	}
	// The wait was still on when globex answered (it ends with this line, 10 s after the
	// request): the join did not merely come after it.
	if strings.Contains(logs, "could not fetch missing events") {
		t.Fatalf("globex's wait for initech had ended before the join was answered:\n%s", logs)
	}
	t.Logf("joined in %v while globex's inbox waited on initech", took)
}

// TestFederationGapsTowardEachOtherRepaired: acme and globex each hold a transaction of the
// other whose prev_event was lost, and both get it at the same moment: each asks the other for
// the lost event (get_missing_events) and waits for the answer. Each answers the other's request
// at once and both gaps close. Until 2026-12-07 each org's request waited in the other's inbox
// behind the other's waiting transaction: both timed out after 10 s, twice, in step, and some
// 20 s in both orgs applied their transactions with the gaps (15 deliveries spent): "acme lost"
// and "globex lost" never reached the other org.
func TestFederationGapsTowardEachOtherRepaired(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	aliceToken, bobToken := register(t, acme.node, "alice"), register(t, globex.node, "bob")
	alice, bob := dial(t, acme.node, aliceToken), dial(t, globex.node, bobToken)
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "a0", "before the gaps"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "before the gaps")

	// globex down: acme's two messages are taken off its inbox, the first lost, the second held.
	if code := globex.node.stop(); code != 0 {
		t.Fatalf("globex exited %d", code)
	}
	toGlobex := loseAndHold(t, vhost, "globex.test", func(i int, body string) error {
		_, err := alice.Send(ctx(t), room, fmt.Sprintf("a%d", i+1), body)
		return err
	}, "acme lost", "acme after its gap")
	globex.node.start()
	waitLeader(t, globex.node)
	bob = dial(t, globex.node, bobToken)

	// acme down: the same with globex's two messages.
	if code := acme.node.stop(); code != 0 {
		t.Fatalf("acme exited %d", code)
	}
	toAcme := loseAndHold(t, vhost, "acme.test", func(i int, body string) error {
		_, err := bob.Send(ctx(t), room, fmt.Sprintf("b%d", i+1), body)
		return err
	}, "globex lost", "globex after its gap")
	acme.node.start()
	waitLeader(t, acme.node)
	alice = dial(t, acme.node, aliceToken)

	// Both held transactions arrive together: each org lacks the other's lost event.
	ch := amqpChannel(t, vhost)
	for dest, d := range map[string]amqp091.Delivery{"globex.test": toGlobex, "acme.test": toAcme} {
		err := ch.PublishWithContext(ctx(t), federation.ExchangeFederation, dest, false, false, amqp091.Publishing{
			ContentType: d.ContentType, DeliveryMode: amqp091.Persistent, MessageId: d.MessageId, Type: d.Type,
			Timestamp: d.Timestamp, Body: d.Body})
		if err != nil {
			t.Fatal(err)
		}
	}
	want := "before the gaps|acme lost|acme after its gap|globex lost|globex after its gap"
	wantGlobex := "before the gaps|globex lost|globex after its gap|acme lost|acme after its gap"
	// Well within the 10 s each get_missing_events would wait for an answer.
	waitMessages(t, alice, room, want, 8*time.Second)
	waitMessages(t, bob, room, wantGlobex, 8*time.Second)
}

// loseAndHold sends lost and then held (send), each taken off dest's inbox (so in a
// transaction of its own) before the next is sent: lost is gone, held is returned, to be
// published again later.
func loseAndHold(t *testing.T, amqpURL, dest string, send func(i int, body string) error, lost, held string) amqp091.Delivery {
	t.Helper()
	if err := send(0, lost); err != nil {
		t.Fatal(err)
	}
	takeMessages(t, amqpURL, federation.InboxQueue(dest), lost)
	if err := send(1, held); err != nil {
		t.Fatal(err)
	}
	return takeMessages(t, amqpURL, federation.InboxQueue(dest), held)[held]
}

// takeMessages takes messages off queue (acked: gone) until it saw every one of bodies, and
// returns the message that carried each; it loses whatever else it meets.
func takeMessages(t *testing.T, amqpURL, queue string, bodies ...string) map[string]amqp091.Delivery {
	t.Helper()
	ch := amqpChannel(t, amqpURL)
	taken := map[string]amqp091.Delivery{}
	deadline := time.Now().Add(30 * time.Second)
	for len(taken) < len(bodies) {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d messages reached %s", len(taken), len(bodies), queue)
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		for _, b := range bodies {
			if strings.Contains(string(d.Body), fmt.Sprintf("%q", b)) {
				taken[b] = d
			}
		}
	}
	return taken
}

// spyOn binds a new queue of ch to the federation exchange with key (an org): it gets a copy
// of every message published to that org.
func spyOn(t *testing.T, ch *amqp091.Channel, key string) <-chan amqp091.Delivery {
	t.Helper()
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, key, federation.ExchangeFederation, false, nil); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return deliveries
}

// waitSpied waits (bounded) for a message of spy that matches.
func waitSpied(t *testing.T, spy <-chan amqp091.Delivery, what string, match func(amqp091.Delivery) bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case d, ok := <-spy:
			if !ok {
				t.Fatalf("the spy closed before %s", what)
			}
			if match(d) {
				return
			}
		case <-timeout:
			t.Fatalf("no %s", what)
		}
	}
}
