package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/rabbitmq/amqp091-go"
)

var consumerSeq atomic.Uint64

// Consumer consumes one queue with Qos(prefetch) and manual acks, re-subscribing after
// reconnects. The handler is called sequentially per delivery (one goroutine per consumer); it
// must Ack/Nack/Reject the delivery itself. Acks of a delivery from a dead channel simply fail
// and the broker redelivers the message, so processing must be idempotent.
type Consumer struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Consume starts consuming queue on c in a new goroutine, with at most prefetch unacked
// deliveries (minimum 1). It subscribes whenever there is a connection, retrying with backoff when
// subscribing fails (e.g. the queue does not exist yet) or the broker cancels the subscription.
// The handler's ctx is done when the Consumer is closed or ctx is done; it stops consuming then,
// and Close must still be called to wait for the goroutine.
func Consume(ctx context.Context, c *Conn, queue string, prefetch int, handler func(context.Context, amqp091.Delivery)) *Consumer {
	return ConsumeRedeclaring(ctx, c, queue, prefetch, nil, handler)
}

// ConsumeRedeclaring is Consume with redeclare (may be nil) called before every subscription
// after an interrupted or failed one. Without it, a queue the broker lost (an operator deleted
// it, a reset broker came back empty) is refused (404) at every try until the node restarts,
// and what is sent to it meanwhile is dropped as unroutable. Its errors are logged and the
// subscription is tried all the same; a redeclare that hangs (a blocked connection) is
// abandoned when ctx ends, and ends with the connection.
func ConsumeRedeclaring(ctx context.Context, c *Conn, queue string, prefetch int, redeclare func(context.Context) error,
	handler func(context.Context, amqp091.Delivery)) *Consumer {
	if prefetch < 1 {
		prefetch = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	cons := &Consumer{cancel: cancel, done: make(chan struct{})}
	s := &subscription{
		c:         c,
		queue:     queue,
		prefetch:  prefetch,
		handler:   handler,
		redeclare: redeclare,
		log:       c.log.With("queue", queue),
	}
	go func() {
		defer close(cons.done)
		s.run(ctx)
	}()
	return cons
}

// Close stops consuming and waits for the handler goroutine to end. Deliveries not yet acked
// return to the queue.
func (c *Consumer) Close() {
	c.cancel()
	<-c.done
}

type subscription struct {
	c         *Conn
	queue     string
	prefetch  int
	handler   func(context.Context, amqp091.Delivery)
	redeclare func(context.Context) error
	declaring chan error // the redeclare in progress, if any
	log       *slog.Logger
}

func (s *subscription) run(ctx context.Context) {
	attempt := 0
	for {
		lived, err := s.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrClosed) || s.c.bad != nil {
			s.log.Warn("amqp consumer stopped", "err", err)
			return
		}
		if lived >= s.c.cfg.MaxBackoff {
			attempt = 0
		}
		d := backoff(s.c.cfg.MinBackoff, s.c.cfg.MaxBackoff, attempt)
		attempt++
		s.log.Warn("amqp consumer interrupted", "err", err, "retry_in", d)
		if !sleep(ctx, d) {
			return
		}
		if s.redeclare != nil && !s.declareAgain(ctx) {
			return
		}
	}
}

// declareAgain runs redeclare, waiting at most redeclareTimeout (and a second) for it; it
// reports false if ctx ended. One that is still running from an earlier try is waited for
// rather than started again, so a hanging one does not pile up goroutines.
func (s *subscription) declareAgain(ctx context.Context) bool {
	if s.declaring == nil {
		done := make(chan error, 1)
		s.declaring = done
		go func() {
			dctx, cancel := context.WithTimeout(ctx, redeclareTimeout)
			defer cancel()
			done <- s.redeclare(dctx)
		}()
	}
	t := time.NewTimer(redeclareTimeout + time.Second)
	defer t.Stop()
	select {
	case err := <-s.declaring:
		s.declaring = nil
		if err != nil {
			s.log.Warn("amqp consumer: declaring the queue again failed", "err", err)
		}
		return true
	case <-ctx.Done():
		return false
	case <-t.C:
		s.log.Warn("amqp consumer: declaring the queue again takes long; subscribing all the same")
		return true
	}
}

// redeclareTimeout bounds waiting for a connection to declare the queue again on.
const redeclareTimeout = 5 * time.Second

// once subscribes on a fresh channel and handles deliveries until the channel or subscription
// ends (an error) or ctx is done (nil). lived is how long the subscription was active.
func (s *subscription) once(ctx context.Context) (lived time.Duration, err error) {
	ch, err := s.c.Channel(ctx)
	if err != nil {
		return 0, err
	}
	// Closing the channel returns unacked deliveries to the queue. After ctx is done, the
	// handler has returned, so its acks are sent before the close.
	defer func() { waitAtMost(s.c.closeChannel(ch), closeTimeout) }()
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	if err := ch.Qos(s.prefetch, 0, false); err != nil {
		return 0, fmt.Errorf("amqp: set prefetch on %q: %w", s.queue, err)
	}
	tag := fmt.Sprintf("%s/%s/%d", s.c.cfg.Name, s.queue, consumerSeq.Add(1))
	if len(tag) > 255 {
		tag = tag[len(tag)-255:]
	}
	deliveries, err := ch.Consume(s.queue, tag, false, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("amqp: consume %q: %w", s.queue, err)
	}
	start := time.Now()
	s.log.Debug("amqp consumer subscribed", "tag", tag, "prefetch", s.prefetch)
	for {
		select {
		case <-ctx.Done():
			return time.Since(start), nil
		case d, ok := <-deliveries:
			if !ok {
				reason := errors.New("subscription cancelled by the broker")
				select {
				case e, ok := <-closed:
					if ok && e != nil {
						reason = e
					} else {
						reason = amqp091.ErrClosed
					}
				default:
				}
				return time.Since(start), fmt.Errorf("amqp: consuming %q: %w", s.queue, reason)
			}
			if ctx.Err() != nil {
				return time.Since(start), nil // unacked: it returns to the queue with the channel
			}
			s.handler(ctx, d)
		}
	}
}
