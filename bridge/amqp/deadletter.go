package amqp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

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
	// HeaderDroppedHeaders names the headers of a refused message left out so that its dead
	// letter fits in one AMQP frame with the reason added, largest first: "name (N bytes), …".
	HeaderDroppedHeaders = "x-parley-dropped-headers"
)

// A dead letter must fit in one content header frame (frame_max): a reason may quote what the
// sender sent (up to a whole body), and the sender's own headers may nearly fill the frame.
// Sent too large, the broker closes the connection (FRAME_ERROR) at every delivery, and the
// messages prefetched with it return to the queue each time, towards its delivery limit.
const (
	// maxReasonBytes bounds x-parley-error; a longer reason is cut (at a rune) and marked "…".
	maxReasonBytes = 1024
	// headerFrameReserve is what a content header frame takes besides the headers: its
	// fixed fields and the other properties (short strings, 255 bytes at most each).
	headerFrameReserve = 8 + 14 + 12*256
)

// DeadLetter publishes d's body and properties unchanged to exchange (mandatory, routing key as
// delivered) with header x-parley-error = reason (e.g. "M_FORBIDDEN: bad signature"), waits for
// the confirm, then acks d. If publishing fails, it Nacks d with requeue and returns the error
// (the queue's delivery limit is the backstop if that keeps failing).
//
// Two properties cannot survive unchanged: a user_id other than the Conn's user moves to header
// x-parley-original-user-id, and an expiration moves to x-parley-original-expiration. The
// reason is cut to maxReasonBytes, and headers that would not fit in one frame with it are
// left out (HeaderDroppedHeaders).
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
	msg.Headers[HeaderError] = cutReason(reason)
	if msg.UserId != "" && msg.UserId != p.c.user {
		msg.Headers[HeaderOriginalUserID] = msg.UserId
		msg.UserId = ""
	}
	if d.Expiration != "" {
		msg.Headers[HeaderOriginalExpiration] = d.Expiration
	}
	dropLargestHeaders(msg.Headers, p.c.frameMax()-headerFrameReserve)
	if err := p.Publish(ctx, exchange, d.RoutingKey, true, msg); err != nil {
		// A reject, which quorum queues count in x-delivery-count (a nack is not, from
		// RabbitMQ 4.3): the delivery limit still bounds a dead letter that keeps failing.
		if nerr := d.Reject(true); nerr != nil {
			err = errors.Join(err, fmt.Errorf("reject: %w", nerr))
		}
		return fmt.Errorf("amqp: dead-letter message %q: %w", d.MessageId, err)
	}
	if err := d.Ack(false); err != nil {
		return fmt.Errorf("amqp: ack dead-lettered message %q: %w", d.MessageId, err)
	}
	return nil
}

// dropLargestHeaders leaves out the largest of the original headers of h (never one DeadLetter
// set) until h fits in limit bytes, and names them in HeaderDroppedHeaders: the small ones an
// operator reads (x-delivery-count, a correlation id) stay.
func dropLargestHeaders(h amqp091.Table, limit int) {
	if tableSize(h) <= limit {
		return
	}
	var names []string
	for k := range h {
		if k != HeaderError && k != HeaderOriginalUserID && k != HeaderOriginalExpiration {
			names = append(names, k)
		}
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(fieldSize(h[b]), fieldSize(h[a])), cmp.Compare(a, b))
	})
	var dropped []string
	for _, k := range names {
		if tableSize(h) <= limit {
			break
		}
		dropped = append(dropped, fmt.Sprintf("%s (%d bytes)", k, fieldSize(h[k])))
		delete(h, k)
		note := strings.Join(dropped, ", ")
		if len(note) > maxReasonBytes {
			note = cutReason(note)
		}
		h[HeaderDroppedHeaders] = note
	}
}

// cutReason bounds a reason to maxReasonBytes.
func cutReason(reason string) string {
	if len(reason) <= maxReasonBytes {
		return reason
	}
	const mark = "…"
	n := maxReasonBytes - len(mark)
	for n > 0 && !utf8.RuneStart(reason[n]) {
		n--
	}
	return reason[:n] + mark
}

// tableSize is the encoded size of t as a field table (amqp091's encoding).
func tableSize(t amqp091.Table) int {
	n := 4
	for k, v := range t {
		n += 1 + len(k) + fieldSize(v)
	}
	return n
}

func fieldSize(v any) int {
	switch v := v.(type) {
	case bool, byte, int8:
		return 2
	case int16, uint16:
		return 3
	case int, int32, uint32, float32:
		return 5
	case int64, float64, time.Time:
		return 9
	case amqp091.Decimal:
		return 6
	case string:
		return 5 + len(v)
	case []byte:
		return 5 + len(v)
	case []any:
		n := 5
		for _, e := range v {
			n += fieldSize(e)
		}
		return n
	case amqp091.Table:
		return 1 + tableSize(v)
	default: // nil, or what amqp091 would refuse to encode anyway
		return 1
	}
}
