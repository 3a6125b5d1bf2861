package federation

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// recorder records what a worker handled, in order.
type recorder struct {
	mu  sync.Mutex
	ids []string
	got chan string
}

func newRecorder() *recorder { return &recorder{got: make(chan string, 100)} }

func (r *recorder) handle(_ context.Context, d amqp091.Delivery) {
	r.mu.Lock()
	r.ids = append(r.ids, d.MessageId)
	r.mu.Unlock()
	r.got <- d.MessageId
}

func (r *recorder) handled() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

func (r *recorder) wait(t *testing.T, id string) {
	t.Helper()
	select {
	case got := <-r.got:
		if got != id {
			t.Fatalf("handled %s, want %s", got, id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s not handled", id)
	}
}

// fakeAck is a delivery's channel, open or closed.
type fakeAck struct{ closed bool }

func (fakeAck) Ack(uint64, bool) error        { return nil }
func (fakeAck) Nack(uint64, bool, bool) error { return nil }
func (fakeAck) Reject(uint64, bool) error     { return nil }
func (a fakeAck) IsClosed() bool              { return a.closed }

// delivery is a delivery of type typ on an open channel.
func delivery(typ, id string) amqp091.Delivery {
	return amqp091.Delivery{Acknowledger: fakeAck{}, Type: typ, MessageId: id}
}

// staleDeliveryOf is a delivery of type typ on a channel that has closed since.
func staleDeliveryOf(typ, id string) amqp091.Delivery {
	return amqp091.Delivery{Acknowledger: fakeAck{closed: true}, Type: typ, MessageId: id}
}

func waitGroup(t *testing.T, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the workers did not end with their ctx")
	}
}

// TestInboxRequestsDoNotWaitBehindTransactions: while the transaction worker is held (a
// transaction waiting on get_missing_events), requests delivered after it are answered, in
// order; the transactions are then handled in delivery order. Until 2026-12-07 one handler did
// both, and the requests waited.
func TestInboxRequestsDoNotWaitBehindTransactions(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newInboxWorkers(inboxQueueLen)
	release := make(chan struct{})
	txns, reqs := newRecorder(), newRecorder()
	holdTxn := func(ctx context.Context, d amqp091.Delivery) {
		if d.MessageId == "t1" {
			select { // the gap: waits on another org
			case <-release:
			case <-ctx.Done():
				return
			}
		}
		txns.handle(ctx, d)
	}
	var wg sync.WaitGroup
	w.run(ctx, &wg, holdTxn, reqs.handle)
	for _, d := range []amqp091.Delivery{delivery(TypeTxn, "t1"), delivery(TypeTxn, "t2"), delivery(TypeRequest, "r1"),
		delivery("", "t3"), delivery(TypeRequest, "r2"), delivery("parley.unknown", "t4")} {
		w.dispatch(ctx, d) // never waits: the queues hold a prefetch window each
	}
	reqs.wait(t, "r1")
	reqs.wait(t, "r2")
	if got := txns.handled(); len(got) != 0 {
		t.Fatalf("transactions handled while the first is held: %v", got)
	}
	close(release)
	for _, id := range []string{"t1", "t2", "t3", "t4"} { // anything not a request goes to handle's refusal, in order
		txns.wait(t, id)
	}
	cancel()
	waitGroup(t, &wg)
	if got := reqs.handled(); !slices.Equal(got, []string{"r1", "r2"}) {
		t.Fatalf("requests handled: %v", got)
	}
}

// TestInboxWorkersEndWithTheirCtx: once ctx is done, the worker holding a delivery gives it up
// (handle returns with ctx), the queued deliveries are dropped unhandled (unacked, the broker
// redelivers them), and the hand-off does not wait on a full queue.
func TestInboxWorkersEndWithTheirCtx(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w := newInboxWorkers(2)
	started := make(chan struct{})
	txns := newRecorder()
	hold := func(ctx context.Context, d amqp091.Delivery) {
		if d.MessageId == "t1" {
			close(started)
			<-ctx.Done()
			return
		}
		txns.handle(ctx, d)
	}
	var wg sync.WaitGroup
	w.run(ctx, &wg, hold, txns.handle)
	w.dispatch(ctx, delivery(TypeTxn, "t1"))
	<-started
	w.dispatch(ctx, delivery(TypeTxn, "t2"))
	w.dispatch(ctx, delivery(TypeTxn, "t3")) // the queue (2) is full now
	cancel()
	dispatched := make(chan struct{})
	go func() { w.dispatch(ctx, delivery(TypeTxn, "t4")); close(dispatched) }()
	select {
	case <-dispatched:
	case <-time.After(5 * time.Second):
		t.Fatal("the hand-off waits on a full queue after ctx is done")
	}
	waitGroup(t, &wg)
	if got := txns.handled(); len(got) != 0 {
		t.Fatalf("handled after ctx was done: %v", got)
	}
}

// TestInboxWorkersSkipStaleDeliveries: a delivery whose channel has closed (a reconnect) is
// not handled: its ack would fail, and the broker redelivers it on the new channel.
func TestInboxWorkersSkipStaleDeliveries(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newInboxWorkers(inboxQueueLen)
	txns, reqs := newRecorder(), newRecorder()
	var wg sync.WaitGroup
	w.run(ctx, &wg, txns.handle, reqs.handle)
	w.dispatch(ctx, staleDeliveryOf(TypeTxn, "old t1"))
	w.dispatch(ctx, staleDeliveryOf(TypeRequest, "old r1"))
	w.dispatch(ctx, delivery(TypeTxn, "t1"))
	w.dispatch(ctx, delivery(TypeRequest, "r1"))
	txns.wait(t, "t1")
	reqs.wait(t, "r1")
	cancel()
	waitGroup(t, &wg)
}
