package federation

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// deadLetterOrg starts acme.test alone, counting its attempts to dead-letter and the dead
// letters it reports (OnDeadLetter, the metric), and returns a broker connection to the test's
// vhost.
func deadLetterOrg(t *testing.T) (conn *amqp091.Connection, attempts func() []time.Time, reported *atomic.Int32) {
	t.Helper()
	amqpURL := testVhost(t)
	var mu sync.Mutex
	var at []time.Time
	reported = new(atomic.Int32)
	startTestOrgsWith(t, amqpURL, func(o *Options) {
		o.deadLetterTried = func() {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
		}
		o.OnDeadLetter = func(string) { reported.Add(1) }
	}, "acme.test")
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Time(nil), at...)
	}, reported
}

// onChannel runs f on a channel of its own (a failed passive declare closes its channel).
func onChannel(t *testing.T, conn *amqp091.Connection, f func(ch *amqp091.Channel) error) error {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	return f(ch)
}

// publishRefused puts a message into acme.test's inbox that it refuses (not JSON).
func publishRefused(t *testing.T, conn *amqp091.Connection) {
	t.Helper()
	err := onChannel(t, conn, func(ch *amqp091.Channel) error {
		return ch.PublishWithContext(context.Background(), ExchangeFederation, "acme.test", false, false, amqp091.Publishing{
			ContentType: "application/json", Type: TypeTxn, MessageId: "not-json", Body: []byte("not json")})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func dlqHolds(t *testing.T, conn *amqp091.Connection, n int) bool {
	return onChannel(t, conn, func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclarePassive(QueueDLQ, true, false, false, false, nil)
		if err == nil && q.Messages != n {
			return errDrop
		}
		return err
	}) == nil
}

// TestDeadLetterFailureBacksOff: while the broker refuses dead letters (a DLQ that takes nothing,
// which declaring the topology again cannot replace), a refused message is tried again with a
// growing pause, not hot: until 2026-12-07 its 20 deliveries (the inbox's x-delivery-limit) went
// by in well under a second, and RabbitMQ then dead-lettered it itself into the same DLX, where
// it was lost. Once the DLQ takes messages again the message reaches it.
func TestDeadLetterFailureBacksOff(t *testing.T) {
	conn, attempts, _ := deadLetterOrg(t)
	err := onChannel(t, conn, func(ch *amqp091.Channel) error {
		if _, err := ch.QueueDelete(QueueDLQ, false, false, false); err != nil {
			return err
		}
		// A classic queue in its place, full at 0 messages: the broker nacks every dead letter,
		// and the org's declaration of its quorum DLQ fails against it.
		if _, err := ch.QueueDeclare(QueueDLQ, true, false, false, false,
			amqp091.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"}); err != nil {
			return err
		}
		return ch.QueueBind(QueueDLQ, "", ExchangeDLX, false, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	publishRefused(t, conn)
	waitFor(t, 10*time.Second, "the first attempt to dead-letter", func() bool { return len(attempts()) > 0 })
	first := attempts()[0]
	const window = 3 * time.Second
	time.Sleep(time.Until(first.Add(window)))
	n := 0
	for _, a := range attempts() {
		if a.Sub(first) <= window {
			n++
		}
	}
	// 100 ms doubling: attempts at 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s.
	if n < 2 || n > 6 {
		t.Fatalf("%d attempts to dead-letter in %v while the broker refused them, want 2 to 6 (retried, with a backoff)", n, window)
	}

	// The refusing queue goes: the org declares its DLQ again at the next failure.
	if err := onChannel(t, conn, func(ch *amqp091.Channel) error {
		_, err := ch.QueueDelete(QueueDLQ, false, false, false)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the message in the DLQ", func() bool { return dlqHolds(t, conn, 1) })
}

// TestDeadLetterRedeclaresTheDLQ: a refused message whose dead letter fails because the DLX and
// the DLQ are gone (an operator deleted them, a broker reset) makes the org declare its topology
// again, and the message reaches the DLQ at the next attempt. Until 2026-12-07 the topology came
// back only with a reconnect: the message went through its 20 deliveries and was lost.
func TestDeadLetterRedeclaresTheDLQ(t *testing.T) {
	conn, attempts, reported := deadLetterOrg(t)
	if err := onChannel(t, conn, func(ch *amqp091.Channel) error {
		if _, err := ch.QueueDelete(QueueDLQ, false, false, false); err != nil {
			return err
		}
		return ch.ExchangeDelete(ExchangeDLX, false, false)
	}); err != nil {
		t.Fatal(err)
	}
	publishRefused(t, conn)
	waitFor(t, 10*time.Second, "the message in the DLQ", func() bool { return dlqHolds(t, conn, 1) })
	if n := len(attempts()); n != 2 {
		t.Errorf("%d attempts to dead-letter, want 2 (one failed, one after declaring the topology again)", n)
	}
	// parley_dead_letters_total counts the message once, when it is in the DLQ (reported once the
	// node has its confirm, which may be just after the DLQ holds it: waited for).
	waitFor(t, 10*time.Second, "the dead letter reported", func() bool { return reported.Load() > 0 })
	if n := reported.Load(); n != 1 {
		t.Errorf("%d dead letters reported for one message, want 1", n)
	}
}
