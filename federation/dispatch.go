package federation

import (
	"context"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The inbox carries transactions and requests, consumed in order by one consumer. Until
// 2026-12-07 the consumer's handler did the work itself, one message at a time, so a
// transaction whose prev_events were missing held every request behind it while it waited up to
// 10 s for the sending org's get_missing_events answer (missing.go). Two orgs with gaps toward
// each other (or three in a cycle) each waited on the other's inbox: every request timed out,
// both recorded the other as silent, and once their requeues were spent (gapRequeueBudget, some
// 20 s) or gapRepairWindow had passed, both applied their transactions with the gaps, for good;
// a mere backlog of transactions delayed joins, send_state and backfill answers past the
// requester's timeout.
//
// So the consumer's handler only hands each delivery to one of two workers, each one goroutine
// working in delivery order:
//
//   - the transaction worker runs handle on transactions (and on anything that is not a
//     request: handle refuses it), exactly as the consumer did, with its requeues and rejects;
//   - the request worker answers requests. Answering never calls another org: make_join,
//     get_missing_events and backfill only read this org's state, send_join, send_state and
//     send_leave commit one event through Raft, and every answer is signed locally. A request
//     therefore never waits on a peer, whatever the transaction worker waits on.
//
// Requests are answered in order among themselves, transactions applied in order among
// themselves; a request may now be answered before a transaction that was delivered ahead of it
// is applied. Nothing needs the old order: an org makes the events that depend on a request's
// effect (its user's messages after a join, after a state change) only once the answer came
// back, so after this org committed it; and a transaction held by a gap was never applied before
// later requests either, since it went back to the queue (a reject with requeue). Both workers
// ack a delivery only after its effect is committed, as before; the state machine skips an
// event_id already stored, so the two workers committing the same event stores it once.
//
// The broker bounds the deliveries in flight (prefetch, unacked), so each worker's queue has room
// for all of them and the handler does not wait. A request still waits for its delivery when the
// whole prefetch window is held by unacked transactions (32 of them ahead of it): the broker
// sends it only once one is acked or requeued.

// inboxQueueLen is each worker's queue: the consumer's prefetch, so the hand-off never waits
// while the channel lives (a reconnect can leave deliveries of the closed channel queued, which
// the workers skip).
const inboxQueueLen = inboxPrefetch

// inboxPrefetch is how many unacked deliveries the inbox consumer takes (docs/federation.md).
const inboxPrefetch = 32

// inboxWorkers hands the inbox's deliveries to the transaction and the request worker.
type inboxWorkers struct {
	txns chan amqp091.Delivery
	reqs chan amqp091.Delivery
}

func newInboxWorkers(n int) *inboxWorkers {
	return &inboxWorkers{txns: make(chan amqp091.Delivery, n), reqs: make(chan amqp091.Delivery, n)}
}

// dispatch is the consumer's handler: it queues d for its worker, waiting only while that queue
// is full, and drops d once ctx is done (unacked, it returns to the queue when the consumer's
// channel closes, and the next leader gets it).
func (w *inboxWorkers) dispatch(ctx context.Context, d amqp091.Delivery) {
	if ctx.Err() != nil {
		return
	}
	q := w.txns
	if d.Type == TypeRequest {
		q = w.reqs
	}
	select {
	case q <- d:
	case <-ctx.Done():
	}
}

// run starts the two workers, each calling handle on the deliveries of its queue in order,
// until ctx is done. A worker finishes the delivery it is handling (handle gives up its waits
// when ctx ends, and requeues what it did not commit) and drops the ones still queued. wg.Wait
// returns once both have ended.
func (w *inboxWorkers) run(ctx context.Context, wg *sync.WaitGroup, handleTxn, handleReq func(context.Context, amqp091.Delivery)) {
	wg.Go(func() { work(ctx, w.txns, handleTxn) })
	wg.Go(func() { work(ctx, w.reqs, handleReq) })
}

func work(ctx context.Context, q <-chan amqp091.Delivery, handle func(context.Context, amqp091.Delivery)) {
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-q:
			if ctx.Err() != nil {
				return // dropped, unacked: redelivered
			}
			if staleDelivery(d) {
				continue // its channel closed (a reconnect): the broker redelivers it on the new one
			}
			handle(ctx, d)
		}
	}
}

// staleDelivery reports whether d came on a channel that has closed since: its ack would fail
// and the broker has put it back in the queue already, so handling it would be wasted (a
// transaction with a gap would wait 10 s for nothing). Handling it anyway would be harmless:
// applying is idempotent by event_id, and a request answered twice gets the same answer.
func staleDelivery(d amqp091.Delivery) bool {
	ch, ok := d.Acknowledger.(interface{ IsClosed() bool })
	return ok && ch.IsClosed()
}

// handleRequestDelivery is handle for the request worker, bounded by requestTTL: the requester
// waits 15 s, so no commit behind an answer (send_join, send_state, send_leave) holds the
// requests after it longer than that.
func (s *Service) handleRequestDelivery(ctx context.Context, d amqp091.Delivery) {
	ctx, cancel := context.WithTimeout(ctx, requestTTL)
	defer cancel()
	s.handle(ctx, d)
}
