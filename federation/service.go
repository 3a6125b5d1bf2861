package federation

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/consensus"
)

// Topology names of amqp.md.
const (
	ExchangeFederation = "parley.federation"
	ExchangeDLX        = "parley.federation.dlx"
	QueueDLQ           = "parley.fed.dlq"
)

// InboxQueue is ORG's inbox queue.
func InboxQueue(org string) string { return "parley.fed." + org }

// Options configure the federation service of one node.
type Options struct {
	Org     string
	Cluster *consensus.Cluster
	Keys    *Keys
	AMQPURL string
	Peers   map[string]PeerKey // org -> key
	// PreviousKeys are this org's keys from before a rotation (federation.previous_keys): its
	// own older events, coming back to it, still verify.
	PreviousKeys []PublicKey
	Logger       *slog.Logger
	// OnTyping delivers a remote typing EDU to local clients.
	OnTyping func(room, user string, typing bool, timeout time.Duration)
	// OnPresence shows a remote user's presence (an m.presence EDU sent at ts, the origin's
	// Unix milliseconds) to local clients; an "online" lapses after ttl unless refreshed
	// (presence.go).
	OnPresence func(user, status string, ts int64, ttl time.Duration)
	// OnlineUsers lists this org's users online on any of its nodes, for the periodic
	// presence refresh sent to peers.
	OnlineUsers func() []string
	// BatchSize bounds PDUs per outgoing transaction (default 50).
	BatchSize int
	// OnDeadLetter and OnRelayed feed metrics; may be nil.
	OnDeadLetter func(reason string)
	OnRelayed    func(dest string, lag time.Duration)
	// OnBacklog reports, for a peer, how many events of the org's stream the outbox has yet to
	// relay to it or pass over (0 when caught up, and when this node stops relaying); may be nil.
	OnBacklog   func(dest string, events int64)
	OnReconnect func()

	// deadLetterTried, in tests, is called at every attempt to dead-letter.
	deadLetterTried func()
}

// Service relays this org's events to its peers (outbox) and applies theirs (inbox). Both run
// only on the leader; every node declares the topology and can answer as a requester.
type Service struct {
	opts Options
	log  *slog.Logger
	conn *amqp.Conn

	mu         sync.Mutex
	pub        *amqp.Publisher // dead letters and replies, from the inbox workers (dispatch.go)
	dlFailures int             // dead letters that failed in a row (deadLetterFailed)
	ctx        context.Context // done when the service closes
	shutdown   context.CancelFunc
	done       chan struct{} // closed when the leader watch returned

	eduSlots chan struct{} // bounds EDU transactions waiting or in flight, over all destinations

	gaps gapOutages // origins that did not answer get_missing_events (missing.go)

	// reconnected is signalled on every broker (re)connect: the leader declares the topology
	// again (redeclare).
	reconnected chan struct{}

	eduMu      sync.Mutex
	eduQueues  map[string]*eduQueue                        // destination org -> its EDU transactions, in order
	eduPublish func(dest, txnID string, body []byte) error // publishEDU; a test records instead
}

// Start connects to the broker and begins watching for leadership.
func Start(opts Options) (*Service, error) {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 50
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Service{opts: opts, log: opts.Logger.With("component", "federation"), done: make(chan struct{}),
		eduSlots: make(chan struct{}, 64), eduQueues: map[string]*eduQueue{}, reconnected: make(chan struct{}, 1)}
	s.ctx, s.shutdown = context.WithCancel(context.Background())
	s.eduPublish = s.publishEDU
	onReconnect := func() {
		select {
		case s.reconnected <- struct{}{}:
		default: // one pending signal is enough: redeclare declares everything
		}
		if opts.OnReconnect != nil {
			opts.OnReconnect()
		}
	}
	s.conn = amqp.Dial(context.Background(), amqp.Config{URL: opts.AMQPURL, Name: "parley-federation-" + opts.Org + "-" + opts.Cluster.NodeID(),
		Logger: opts.Logger.With("component", "federation.amqp"), OnReconnect: onReconnect})
	go func() {
		defer close(s.done)
		opts.Cluster.WhileLeading(s.ctx, s.log, s.declare, s.lead)
	}()
	return s, nil
}

// Close stops relaying and consuming and closes the broker connection.
func (s *Service) Close() {
	s.shutdown()
	<-s.done
	s.conn.Close()
}

// declare makes the federation topology; idempotent, so every node does it at every start.
func (s *Service) declare(ctx context.Context) error {
	ch, err := s.conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := amqp.DeclareTopicExchange(ch, ExchangeFederation); err != nil {
		return err
	}
	if err := amqp.DeclareDLQ(ch, ExchangeDLX, QueueDLQ); err != nil {
		return err
	}
	return amqp.DeclareQuorumQueue(ch, amqp.QueueSpec{Name: InboxQueue(s.opts.Org), BindExchange: ExchangeFederation,
		BindKeys: []string{s.opts.Org}, DeadLetterExchange: ExchangeDLX, DeliveryLimit: 20})
}

// redeclare declares the topology again after every broker reconnect while this node leads
// (and once as it starts leading, if a reconnect came while it followed). A broker that lost
// it (reset, or replaced by a fresh node) refused the inbox consumer (no queue) and every
// relay (no exchange) for good when the topology was declared only as the node started:
// nothing crossed until every node restarted (TestFederationRecoversTopologyAfterBrokerReset).
func (s *Service) redeclare(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.reconnected:
		}
		for backoff := 100 * time.Millisecond; ctx.Err() == nil; backoff = min(backoff*2, 10*time.Second) {
			// The declarations wait for the broker without a deadline (a connection the broker
			// blocks): the leader work's end does not wait for them, and they end with the
			// connection at the latest.
			done := make(chan error, 1)
			go func() {
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second) // bounds waiting for a connection
				defer cancel()
				done <- s.declare(dctx)
			}()
			var err error
			select {
			case err = <-done:
			case <-ctx.Done():
				return
			}
			if err == nil {
				break
			}
			s.log.Warn("federation: declare the topology after a reconnect", "err", err, "retry_in", backoff)
			pause(ctx, backoff)
		}
	}
}

// lead relays to every peer, consumes the inbox and refreshes presence while this node leads,
// until ctx ends.
//
// The inbox consumer only hands deliveries to the transaction and the request worker
// (dispatch.go). The consumer runs until both workers have ended, so that the acks of what they
// finished go out before its channel closes (an ack on a closed channel fails and the message is
// redelivered: harmless, but a repeat); deliveries it takes meanwhile are dropped unacked and
// return to the queue with the channel.
func (s *Service) lead(ctx context.Context) {
	s.log.Info("federation: relaying and consuming as leader", "peers", len(s.opts.Peers))
	inbox := newInboxWorkers(inboxQueueLen)
	var workers sync.WaitGroup
	inbox.run(ctx, &workers, s.handle, s.handleRequestDelivery)
	consumeCtx, stopConsuming := context.WithCancel(context.WithoutCancel(ctx))
	consumer := amqp.Consume(consumeCtx, s.conn, InboxQueue(s.opts.Org), inboxPrefetch,
		func(_ context.Context, d amqp091.Delivery) { inbox.dispatch(ctx, d) })
	var wg sync.WaitGroup
	wg.Go(func() { s.refreshPresence(ctx) }) // presence.go
	wg.Go(func() { s.redeclare(ctx) })
	for org := range s.opts.Peers {
		wg.Go(func() { s.relay(ctx, org) })
	}
	<-ctx.Done()
	workers.Wait()
	stopConsuming()
	consumer.Close()
	wg.Wait()
	s.mu.Lock()
	if s.pub != nil {
		s.pub.Close()
		s.pub = nil
	}
	s.mu.Unlock()
	s.log.Info("federation: stopped leader work")
}

// publish sends one signed message to dest's inbox with a confirm.
func (s *Service) publish(ctx context.Context, pub *amqp.Publisher, dest, typ, id string, body []byte) error {
	return pub.Publish(ctx, ExchangeFederation, dest, true, amqp091.Publishing{
		ContentType: "application/json", DeliveryMode: amqp091.Persistent, MessageId: id, Type: typ,
		Timestamp: time.Now(), Body: body,
	})
}

func (s *Service) deadLetter(ctx context.Context, pub *amqp.Publisher, d amqp091.Delivery, code, reason string) {
	msg := fmt.Sprintf("%s: %s", code, reason)
	s.log.Warn("federation: message refused", "message_id", d.MessageId, "reason", msg)
	if s.opts.deadLetterTried != nil {
		s.opts.deadLetterTried()
	}
	if err := amqp.DeadLetter(ctx, pub, ExchangeDLX, d, msg); err != nil {
		wait := s.deadLetterFailed()
		s.log.Error("federation: dead-letter failed; message requeued", "err", err, "retry_in", wait)
		// The DLX or the DLQ may be gone (an operator, a reset broker): declared again, as the
		// bridge does, the next attempt goes through.
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if derr := s.declare(dctx); derr != nil && ctx.Err() == nil {
			s.log.Warn("federation: declaring the topology again failed", "err", derr)
		}
		cancel()
		// The broker redelivers the message at once, to this worker: without a pause it was
		// refused again and again, hot, until its x-delivery-limit made RabbitMQ dead-letter it
		// itself (to the same DLX, so it was lost if that was what failed) within a second.
		pause(ctx, wait)
		return
	}
	if s.opts.OnDeadLetter != nil {
		s.opts.OnDeadLetter(code) // once it is in the DLQ: a requeued one comes again
	}
	s.mu.Lock()
	s.dlFailures = 0
	s.mu.Unlock()
}

// Dead-letter retries back off from deadLetterBackoff, doubling to deadLetterMaxBackoff, while
// dead-lettering keeps failing; a dead letter that goes through resets it. Twenty deliveries
// (the inbox's x-delivery-limit) then span about half a minute of trouble, not a second.
const (
	deadLetterBackoff    = 100 * time.Millisecond
	deadLetterMaxBackoff = 2 * time.Second
)

// deadLetterFailed counts a failed dead letter and returns the pause before the next attempt.
func (s *Service) deadLetterFailed() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	wait := deadLetterBackoff << min(s.dlFailures, 5)
	s.dlFailures++
	return min(wait, deadLetterMaxBackoff)
}
