package amqp

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rabbitmq/amqp091-go"
)

// A refused message whose headers, with the reason added, would not fit in one AMQP frame
// (frame_max, 128 KiB by default): a sender's own large headers, and a reason that quotes what
// it sent (a bridge command's unknown field, up to 64 KiB). Republished as is, the broker would
// close the node's connection for a frame too large, at every delivery, until the queue's
// delivery limit dead-lettered it (the messages of other senders prefetched with it alike):
// it reaches the DLQ, with its body, a bounded reason, and word of the headers left out; the
// messages behind it are handled, and the connection stays up.
func TestDeadLetterOfOversizedHeaders(t *testing.T) {
	t.Parallel()
	var connects atomic.Int32
	c := newConn(t, newVhost(t), "parley-test-deadletter-big", func() { connects.Add(1) })
	declare(t, c, federationTopology(0))
	p := NewPublisher(c)
	t.Cleanup(p.Close)

	big := txn("big")
	big.Headers = amqp091.Table{"x-sender-baggage": strings.Repeat("b", 130000), "x-small": "kept?"}
	if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, big); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"fine-1", "fine-2"} {
		if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, txn(id)); err != nil {
			t.Fatal(err)
		}
	}
	reason := "M_BAD_JSON: unknown field \"" + strings.Repeat("f", 60<<10) + "\""
	acked := make(chan string, 10)
	cons := Consume(context.Background(), c, "parley.fed.acme", 5, func(ctx context.Context, d amqp091.Delivery) {
		if d.MessageId != "big" {
			if err := d.Ack(false); err == nil {
				acked <- d.MessageId
			}
			return
		}
		if err := DeadLetter(ctx, p, "parley.federation.dlx", d, reason); err != nil {
			t.Logf("DeadLetter: %v", err)
		}
	})
	t.Cleanup(cons.Close)

	d := getOne(t, c, "parley.fed.dlq", 20*time.Second)
	if d.MessageId != "big" || string(d.Body) != string(big.Body) {
		t.Fatalf("dead letter %q: %s", d.MessageId, d.Body)
	}
	got, _ := d.Headers[HeaderError].(string)
	if !strings.HasPrefix(got, `M_BAD_JSON: unknown field "fff`) || len(got) > maxReasonBytes {
		t.Errorf("x-parley-error of %d bytes: %.60q…", len(got), got)
	}
	if _, ok := d.Headers["x-sender-baggage"]; ok {
		t.Error("the oversized headers were kept")
	}
	if note, _ := d.Headers[HeaderDroppedHeaders].(string); !strings.HasPrefix(note, "x-sender-baggage (") {
		t.Errorf("%s = %v, want it to name x-sender-baggage", HeaderDroppedHeaders, d.Headers[HeaderDroppedHeaders])
	}
	if d.Headers["x-small"] != "kept?" {
		t.Errorf("a small header was dropped with the large one: %v", d.Headers)
	}
	for range 2 {
		select {
		case <-acked:
		case <-time.After(10 * time.Second):
			t.Fatal("the messages behind it were not handled")
		}
	}
	if n := connects.Load(); n != 1 {
		t.Errorf("%d connects, want 1", n)
	}
}
