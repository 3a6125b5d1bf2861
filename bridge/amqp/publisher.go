package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/rabbitmq/amqp091-go"
)

var (
	// ErrNacked means the broker refused a publish (basic.nack), e.g. a quorum queue with
	// x-overflow reject-publish that is full. Retry later.
	ErrNacked = errors.New("amqp: publish nacked by the broker")
	// ErrUnroutable means a mandatory publish was returned: no queue is bound for its routing key.
	ErrUnroutable = errors.New("amqp: mandatory publish returned unroutable")
	// ErrChannelClosed means the publishing channel closed before the broker confirmed; the
	// message may or may not have arrived.
	ErrChannelClosed = errors.New("amqp: channel closed before the confirm")
)

// Publisher publishes persistent messages with publisher confirms on its own channel, re-opening
// the channel (and waiting for the connection) as needed. Publish returns nil only after the
// broker confirmed (ack); a nack, a return (mandatory and unroutable), a closed channel or ctx
// expiry is an error: the caller retries.
//
// Publish is safe for concurrent use: non-mandatory publishes are pipelined on the one channel;
// mandatory ones go one at a time (a basic.return carries no delivery tag, so only one may be
// outstanding to know which publish it belongs to).
type Publisher struct {
	c   *Conn
	log *slog.Logger

	ctx    context.Context // done on Close
	cancel context.CancelFunc

	sem       chan struct{} // capacity 1: guards cur
	cur       *pubChannel
	mandatory chan struct{} // capacity 1: one mandatory publish in flight
}

type pubChannel struct {
	ch      *amqp091.Channel
	closed  chan *amqp091.Error // buffered 1, read when the channel is found closed
	returns chan amqp091.Return // buffered; read only by the one mandatory publish in flight
}

// NewPublisher returns a Publisher on c. It opens its channel on the first Publish.
func NewPublisher(c *Conn) *Publisher {
	p := &Publisher{
		c:         c,
		log:       c.log.With("publisher", true),
		sem:       make(chan struct{}, 1),
		mandatory: make(chan struct{}, 1),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// Publish publishes msg to exchange with routing key key and waits for the broker's confirm.
// msg is sent persistent (delivery mode 2) whatever its DeliveryMode.
func (p *Publisher) Publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp091.Publishing) error {
	if err := p.publish(ctx, exchange, key, mandatory, msg); err != nil {
		return fmt.Errorf("amqp: publish to exchange %q key %q: %w", exchange, key, err)
	}
	return nil
}

func (p *Publisher) publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp091.Publishing) error {
	if mandatory {
		select {
		case p.mandatory <- struct{}{}:
			defer func() { <-p.mandatory }()
		case <-ctx.Done():
			return ctx.Err()
		case <-p.ctx.Done():
			return ErrClosed
		}
	}
	pc, err := p.channel(ctx)
	if err != nil {
		return err
	}
	if mandatory {
		// Nothing should be left over (see below), but never blame this publish for an older one.
		for drained := false; !drained; {
			select {
			case <-pc.returns:
			default:
				drained = true
			}
		}
	}
	msg.DeliveryMode = amqp091.Persistent
	dc, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, mandatory, false, msg)
	if err != nil {
		if pc.ch.IsClosed() {
			p.discard(pc)
		}
		return err
	}
	if dc == nil { // cannot happen: the channel is in confirm mode
		return errors.New("amqp: channel not in confirm mode")
	}
	ack, err := dc.WaitContext(ctx)
	if err != nil {
		if mandatory {
			// A late basic.return for this message would be taken for the next mandatory
			// publish's: give this channel up.
			p.discard(pc)
		}
		return fmt.Errorf("waiting for the confirm: %w", err)
	}
	if mandatory {
		// The broker sends basic.return before the basic.ack of the same message, and amqp091
		// hands it to pc.returns before it processes the ack: if it was returned, it is there.
		select {
		case r, ok := <-pc.returns:
			if ok {
				return fmt.Errorf("%w: %d %s", ErrUnroutable, r.ReplyCode, r.ReplyText)
			}
		default:
		}
	}
	if !ack {
		if pc.ch.IsClosed() {
			reason := p.discard(pc)
			if reason != nil {
				return fmt.Errorf("%w: %w", ErrChannelClosed, reason)
			}
			return ErrChannelClosed
		}
		return ErrNacked
	}
	return nil
}

// channel returns the current open channel, opening a new one if needed.
func (p *Publisher) channel(ctx context.Context) (*pubChannel, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-p.ctx.Done():
		return nil, ErrClosed
	}
	defer func() { <-p.sem }()
	if p.ctx.Err() != nil {
		return nil, ErrClosed
	}
	if p.cur != nil {
		if !p.cur.ch.IsClosed() {
			return p.cur, nil
		}
		_, _ = p.dropLocked(p.cur)
	}

	// Wait for a connection until ctx is done or the Publisher is closed.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(p.ctx, cancel)
	defer stop()
	ch, err := p.c.Channel(wctx)
	if err != nil {
		if p.ctx.Err() != nil {
			return nil, ErrClosed
		}
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		p.c.closeChannel(ch)
		return nil, fmt.Errorf("amqp: enable publisher confirms: %w", err)
	}
	pc := &pubChannel{
		ch:      ch,
		closed:  ch.NotifyClose(make(chan *amqp091.Error, 1)),
		returns: ch.NotifyReturn(make(chan amqp091.Return, 16)),
	}
	p.cur = pc
	return pc, nil
}

// discard forgets pc if it is still current and closes it (in the background: see
// Conn.closeChannel); it returns why pc closed, if known.
func (p *Publisher) discard(pc *pubChannel) error {
	p.sem <- struct{}{}
	defer func() { <-p.sem }()
	if p.cur != pc {
		return nil
	}
	_, err := p.dropLocked(pc)
	return err
}

// dropLocked forgets pc, starts closing it and drains its close notification; it returns a
// channel closed once pc is closed, and why pc closed, if known. p.sem must be held.
func (p *Publisher) dropLocked(pc *pubChannel) (<-chan struct{}, error) {
	p.cur = nil
	done := p.c.closeChannel(pc.ch)
	select {
	case e, ok := <-pc.closed:
		if ok && e != nil {
			p.log.Warn("amqp publisher channel closed", "err", e)
			return done, e
		}
	default:
	}
	return done, nil
}

// Close closes the Publisher's channel (waiting up to 5s for the broker to acknowledge that);
// publishes still waiting for a confirm then fail. Later Publish calls return ErrClosed. Close
// does not close the Conn.
func (p *Publisher) Close() {
	p.cancel()
	p.sem <- struct{}{}
	pc := p.cur
	var done <-chan struct{}
	if pc != nil {
		done, _ = p.dropLocked(pc)
	}
	<-p.sem
	if done != nil {
		waitAtMost(done, closeTimeout)
	}
}
