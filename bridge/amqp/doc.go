// Package amqp is Parley's RabbitMQ plumbing shared by federation and bridges: a connection that
// reconnects with backoff, idempotent topology, publishing with confirms, consuming with prefetch
// and manual acks, and dead-lettering with a reason.
//
// It deliberately does not use amqp091-go's opt-in automatic recovery: after a reconnect, acks of
// deliveries from before it would go to the new channel's delivery-tag space. Instead every
// connection attempt gets fresh channels, NotifyClose channels are buffered and drained, publisher
// confirms are awaited with a context, mandatory publishes watch NotifyReturn, and every consumer
// sets its own Qos.
//
// Delivery is at least once: a Publish that returns an error may still have reached the broker,
// and a delivery whose ack was lost (its channel died) is redelivered. Callers make applying a
// message idempotent.
//
// Goroutines: a Conn runs one goroutine and a Consumer one; both end on their Close. Channels
// are closed by short-lived goroutines the Conn tracks; they end at the latest with Conn.Close.
package amqp
