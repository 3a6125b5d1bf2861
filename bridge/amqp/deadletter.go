package amqp

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/rabbitmq/amqp091-go"
)

// Headers DeadLetter sets.
const (
	// HeaderError carries the reason a message was refused: "M_CODE: reason".
	HeaderError = "x-parley-error"
	// HeaderOriginalUserID keeps the user_id of a refused message whose user_id is not the
	// Conn's user (the broker would refuse to let us publish it with that user_id).
	HeaderOriginalUserID = "x-parley-original-user-id"
	// HeaderOriginalExpiration keeps the per-message TTL of a refused message (dropped so the
	// message does not expire in the dead-letter queue, as RabbitMQ does when it dead-letters).
	HeaderOriginalExpiration = "x-parley-original-expiration"
)

// DeadLetter publishes d's body and properties unchanged to exchange (mandatory, routing key as
// delivered) with header x-parley-error = reason (e.g. "M_FORBIDDEN: bad signature"), waits for
// the confirm, then acks d. If publishing fails, it Nacks d with requeue and returns the error
// (the queue's delivery limit is the backstop if that keeps failing).
//
// Two properties cannot survive unchanged: a user_id other than the Conn's user moves to header
// x-parley-original-user-id, and an expiration moves to x-parley-original-expiration.
func DeadLetter(ctx context.Context, p *Publisher, exchange string, d amqp091.Delivery, reason string) error {
	msg := amqp091.Publishing{
		Headers:         maps.Clone(d.Headers),
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    d.DeliveryMode,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		UserId:          d.UserId,
		AppId:           d.AppId,
		Body:            d.Body,
	}
	if msg.Headers == nil {
		msg.Headers = amqp091.Table{}
	}
	msg.Headers[HeaderError] = reason
	if msg.UserId != "" && msg.UserId != p.c.user {
		msg.Headers[HeaderOriginalUserID] = msg.UserId
		msg.UserId = ""
	}
	if d.Expiration != "" {
		msg.Headers[HeaderOriginalExpiration] = d.Expiration
	}
	if err := p.Publish(ctx, exchange, d.RoutingKey, true, msg); err != nil {
		if nerr := d.Nack(false, true); nerr != nil {
			err = errors.Join(err, fmt.Errorf("nack: %w", nerr))
		}
		return fmt.Errorf("amqp: dead-letter message %q: %w", d.MessageId, err)
	}
	if err := d.Ack(false); err != nil {
		return fmt.Errorf("amqp: ack dead-lettered message %q: %w", d.MessageId, err)
	}
	return nil
}
