package amqp

import (
	"fmt"

	"github.com/rabbitmq/amqp091-go"
)

// DefaultDeliveryLimit is the x-delivery-limit of a quorum queue whose QueueSpec leaves it 0.
const DefaultDeliveryLimit = 20

// QueueSpec describes a durable quorum queue for DeclareQuorumQueue.
type QueueSpec struct {
	Name string
	// BindExchange, when set, is bound to the queue once per BindKeys entry (once with the empty
	// key when BindKeys is empty, as for a fanout exchange). Leave it empty for a queue that is
	// published to via the default exchange.
	BindExchange string
	BindKeys     []string
	// DeadLetterExchange receives what the queue dead-letters (at least once); empty for none.
	DeadLetterExchange string
	// DeliveryLimit is x-delivery-limit: 0 means DefaultDeliveryLimit, negative means none (the
	// broker then redelivers forever).
	DeliveryLimit int
}

// A declaration the broker refuses closes its channel (a channel exception): open a fresh one
// before going on.

// DeclareTopicExchange declares a durable topic exchange. Declaring it again is a no-op.
func DeclareTopicExchange(ch *amqp091.Channel, name string) error {
	return declareExchange(ch, name, amqp091.ExchangeTopic)
}

// DeclareFanoutExchange declares a durable fanout exchange. Declaring it again is a no-op.
func DeclareFanoutExchange(ch *amqp091.Channel, name string) error {
	return declareExchange(ch, name, amqp091.ExchangeFanout)
}

func declareExchange(ch *amqp091.Channel, name, kind string) error {
	if err := ch.ExchangeDeclare(name, kind, true, false, false, false, nil); err != nil {
		return fmt.Errorf("amqp: declare %s exchange %q: %w", kind, name, err)
	}
	return nil
}

// QueueArgs returns the declaration arguments DeclareQuorumQueue uses for q: x-queue-type quorum,
// x-delivery-limit, and with a dead-letter exchange x-dead-letter-exchange,
// x-dead-letter-strategy at-least-once and x-overflow reject-publish (at-least-once
// dead-lettering requires reject-publish on RabbitMQ 3.10).
func QueueArgs(q QueueSpec) amqp091.Table {
	args := amqp091.Table{amqp091.QueueTypeArg: amqp091.QueueTypeQuorum}
	switch {
	case q.DeliveryLimit == 0:
		args["x-delivery-limit"] = int64(DefaultDeliveryLimit)
	case q.DeliveryLimit > 0:
		args["x-delivery-limit"] = int64(q.DeliveryLimit)
	}
	if q.DeadLetterExchange != "" {
		args["x-dead-letter-exchange"] = q.DeadLetterExchange
		args["x-dead-letter-strategy"] = "at-least-once"
		args[amqp091.QueueOverflowArg] = amqp091.QueueOverflowRejectPublish
	}
	return args
}

// DeclareQuorumQueue declares the durable quorum queue q (arguments as in QueueArgs) and binds it
// to q.BindExchange with each of q.BindKeys. Declaring it again with the same spec is a no-op;
// with different arguments the broker refuses (PRECONDITION_FAILED) and closes the channel.
func DeclareQuorumQueue(ch *amqp091.Channel, q QueueSpec) error {
	if q.Name == "" {
		return fmt.Errorf("amqp: declare quorum queue: empty name")
	}
	if _, err := ch.QueueDeclare(q.Name, true, false, false, false, QueueArgs(q)); err != nil {
		return fmt.Errorf("amqp: declare quorum queue %q: %w", q.Name, err)
	}
	if q.BindExchange == "" {
		return nil
	}
	keys := q.BindKeys
	if len(keys) == 0 {
		keys = []string{""}
	}
	for _, k := range keys {
		if err := ch.QueueBind(q.Name, k, q.BindExchange, false, nil); err != nil {
			return fmt.Errorf("amqp: bind queue %q to %q with key %q: %w", q.Name, q.BindExchange, k, err)
		}
	}
	return nil
}

// DeclareDLQ declares a dead-letter pair: the durable fanout exchange and a durable quorum queue
// bound to it (no delivery limit, no dead-lettering of its own: it keeps what it gets for an
// operator). Declaring it again is a no-op.
func DeclareDLQ(ch *amqp091.Channel, exchange, queue string) error {
	if err := DeclareFanoutExchange(ch, exchange); err != nil {
		return err
	}
	return DeclareQuorumQueue(ch, QueueSpec{Name: queue, BindExchange: exchange, DeliveryLimit: -1})
}
