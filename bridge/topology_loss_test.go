package bridge

import (
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/bridge/internal/bridgetest"
)

// deleteTopology has the broker lose the named queues and exchanges of the test's vhost, as
// an operator's mistake or a reset broker that came back empty would.
func (e *env) deleteTopology(queues []string, exchanges []string) {
	e.t.Helper()
	for _, q := range queues {
		if out, err := bridgetest.Rabbitmqctl("delete_queue", "-p", e.vhost.Name, q); err != nil {
			e.t.Fatalf("%v\n%s", err, out)
		}
	}
	ch, err := e.amqp.Channel()
	if err != nil {
		e.t.Fatal(err)
	}
	defer ch.Close()
	for _, x := range exchanges {
		if err := ch.ExchangeDelete(x, false, false); err != nil {
			e.t.Fatal(err)
		}
	}
}

// The broker loses the bridge topology while the org is idle (no bridged event is published,
// so the relay, which declares it again when a publish fails, does not). First the dead-letter
// pair alone: a refused command still reaches the DLQ with its reason, rather than being
// requeued through the delivery limit and dead-lettered by the broker to an exchange that is
// gone. Then the command queue too: the leader's consumer declares it again, so later commands
// are applied, rather than dropped as unroutable until the node restarts.
func TestTopologyDeclaredAgainAfterLoss(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.publish(e.user, "m1", cmd("t1", "@irc_bob:"+org, "before the loss"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "before the loss" })
	refused := func(txn string) {
		t.Helper()
		e.publish(e.user, "m-"+txn, cmd(txn, "@bob:"+org, "outside the namespace"))
		var dl amqp091.Delivery
		bridgetest.WaitFor(t, 30*time.Second, "the dead letter of "+txn, func() bool {
			ch, err := e.amqp.Channel()
			if err != nil {
				t.Fatal(err)
			}
			defer ch.Close()
			d, ok, err := ch.Get(DeadLetterQueue(org), true)
			dl = d
			return err == nil && ok // no queue yet (404): later
		})
		if got := dl.Headers[amqp.HeaderError]; got != `M_FORBIDDEN: sender outside the namespace of bridge "irc"` || dl.MessageId != "m-"+txn {
			t.Fatalf("dead letter %s: %v: %s", dl.MessageId, got, dl.Body)
		}
	}

	e.deleteTopology([]string{DeadLetterQueue(org)}, []string{DeadLetterExchange(org)})
	refused("t2")
	// Its first dead letter failed (no exchange) and it came again: one dead letter all the same.
	// Reported once the node has its confirm and acked the command, which may be just after the
	// dead letter is in the DLQ: waited for.
	bridgetest.WaitFor(t, 10*time.Second, "the dead letter reported", func() bool { return e.deadLettered.Load() > 0 })
	if n := e.deadLettered.Load(); n != 1 {
		t.Fatalf("parley_dead_letters_total would count %d dead letters for one refused command", n)
	}

	e.deleteTopology([]string{DeadLetterQueue(org), CommandQueue(org)}, []string{DeadLetterExchange(org)})
	// Declared again within the consumer's backoff (MaxBackoff 500ms here).
	bridgetest.WaitFor(t, 20*time.Second, "the command queue declared again", func() bool {
		ch, err := e.amqp.Channel()
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		_, err = ch.QueueDeclarePassive(CommandQueue(org), true, false, false, false, nil)
		return err == nil
	})
	e.publish(e.user, "m3", cmd("t3", "@irc_bob:"+org, "after the loss"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "after the loss" })
	refused("t4")
	e.expectNoDeadLetters() // nothing else, e.g. dead-lettered by the broker with x-death
}
