package amqp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rabbitmq/amqp091-go"
)

func TestBackoff(t *testing.T) {
	minD, maxD := 100*time.Millisecond, 10*time.Second
	for n := range 100 {
		ceil := maxD
		if n < 7 { // 100ms·2⁶ = 6.4s < 10s
			ceil = minD << n
		}
		for range 50 {
			if d := backoff(minD, maxD, n); d < 0 || d > ceil {
				t.Fatalf("backoff(attempt %d) = %v, want within [0, %v]", n, d, ceil)
			}
		}
	}
	// Full jitter: not always the ceiling.
	distinct := map[time.Duration]bool{}
	for range 20 {
		distinct[backoff(minD, maxD, 3)] = true
	}
	if len(distinct) < 2 {
		t.Fatalf("backoff shows no jitter: %v", distinct)
	}
}

// Without a broker: nothing blocks beyond its ctx, and Close ends everything.
func TestUnreachableBroker(t *testing.T) {
	t.Parallel()
	var reconnects atomic.Int32
	c := Dial(context.Background(), Config{
		URL:         "amqp://guest:guest@127.0.0.1:1/",
		Name:        "parley-test-unreachable",
		Logger:      testLogger(t),
		MinBackoff:  5 * time.Millisecond,
		MaxBackoff:  50 * time.Millisecond,
		OnReconnect: func() { reconnects.Add(1) },
	})
	if c.Connected() {
		t.Fatal("Connected() without a broker")
	}
	start := time.Now()
	_, err := c.Channel(ctxTimeout(t, 200*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Channel: %v, want DeadlineExceeded", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("Channel took %v", time.Since(start))
	}
	p := NewPublisher(c)
	if err := p.Publish(ctxTimeout(t, 100*time.Millisecond), "x", "k", true, txn("1")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish: %v, want DeadlineExceeded", err)
	}
	// A publish waiting for the connection ends when the Publisher closes.
	errc := make(chan error, 1)
	go func() { errc <- p.Publish(context.Background(), "x", "k", false, txn("2")) }()
	time.Sleep(50 * time.Millisecond)
	p.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
	cons := Consume(context.Background(), c, "q", 1, func(context.Context, amqp091.Delivery) { t.Error("delivery without a broker") })
	time.Sleep(50 * time.Millisecond)
	cons.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Channel(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Channel after Close: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if reconnects.Load() != 0 {
		t.Fatalf("OnReconnect called %d times", reconnects.Load())
	}
}

func TestBadURL(t *testing.T) {
	t.Parallel()
	c := Dial(context.Background(), Config{URL: "http://nope", Logger: testLogger(t)})
	defer c.Close()
	if _, err := c.Channel(context.Background()); err == nil || errors.Is(err, ErrClosed) {
		t.Fatalf("Channel with a bad URL: %v", err)
	}
	cons := Consume(context.Background(), c, "q", 1, func(context.Context, amqp091.Delivery) {})
	cons.Close()
}

// The ctx given to Dial bounds the Conn's life.
func TestDialContextCancel(t *testing.T) {
	t.Parallel()
	u := newVhost(t)
	ctx, cancel := context.WithCancel(context.Background())
	c := Dial(ctx, Config{URL: u, Name: "parley-test-ctx", Logger: testLogger(t)})
	waitFor(t, 10*time.Second, "connected", c.Connected)
	cancel()
	waitFor(t, 10*time.Second, "disconnected", func() bool { return !c.Connected() })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestTopologyIdempotent(t *testing.T) {
	t.Parallel()
	c := newConn(t, newVhost(t), "parley-test-topology", nil)
	for range 2 { // each on a fresh channel: a refused declaration would close it
		declare(t, c, federationTopology(0))
		declare(t, c, func(ch *amqp091.Channel) error {
			if err := DeclareTopicExchange(ch, "parley.acme.events"); err != nil {
				return err
			}
			if err := DeclareFanoutExchange(ch, "parley.fanout"); err != nil {
				return err
			}
			if err := DeclareDLQ(ch, "parley.acme.bridge.dlx", "parley.acme.bridge.dlq"); err != nil {
				return err
			}
			return DeclareQuorumQueue(ch, QueueSpec{
				Name:               "parley.acme.bridge.in",
				DeadLetterExchange: "parley.acme.bridge.dlx",
			})
		})
	}
	// The arguments really are set: redeclaring with another delivery limit or as a classic
	// queue is refused.
	for _, q := range []QueueSpec{
		{Name: "parley.fed.acme", BindExchange: "parley.federation", BindKeys: []string{"acme"}, DeadLetterExchange: "parley.federation.dlx", DeliveryLimit: 5},
		{Name: "parley.fed.acme", DeliveryLimit: 20},
	} {
		err := c.Do(ctxTimeout(t, 5*time.Second), func(ch *amqp091.Channel) error { return DeclareQuorumQueue(ch, q) })
		var aerr *amqp091.Error
		if !errors.As(err, &aerr) || aerr.Code != amqp091.PreconditionFailed {
			t.Fatalf("redeclare %+v: %v, want PRECONDITION_FAILED", q, err)
		}
	}
	err := c.Do(ctxTimeout(t, 5*time.Second), func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare("parley.fed.acme", true, false, false, false, nil)
		return err
	})
	if err == nil {
		t.Fatal("redeclaring the quorum queue as classic succeeded")
	}
	// The binding works: a mandatory publish with key "acme" routes, "globex" does not.
	p := NewPublisher(c)
	defer p.Close()
	if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, txn("t1")); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "globex", true, txn("t2")); !errors.Is(err, ErrUnroutable) {
		t.Fatalf("publish to unbound key: %v, want ErrUnroutable", err)
	}
	if n := queueLen(t, c, "parley.fed.acme"); n != 1 {
		t.Fatalf("queue holds %d messages, want 1", n)
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	c := newConn(t, newVhost(t), "parley-test-roundtrip", nil)
	declare(t, c, federationTopology(0))
	p := NewPublisher(c)
	t.Cleanup(p.Close)

	const n = 50
	for i := range n {
		msg := txn(fmt.Sprintf("rt-%d", i))
		msg.DeliveryMode = amqp091.Transient // Publish makes it persistent anyway
		if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, msg); err != nil {
			t.Fatal(err)
		}
	}
	var rec recorder
	var order []string
	var mu sync.Mutex
	cons := Consume(context.Background(), c, "parley.fed.acme", 10, func(ctx context.Context, d amqp091.Delivery) {
		if d.DeliveryMode != amqp091.Persistent || d.ContentType != "application/json" || d.Type != "parley.txn.v1" ||
			string(d.Body) != string(txn(d.MessageId).Body) {
			t.Errorf("delivery %q: mode %d, type %q %q, body %s", d.MessageId, d.DeliveryMode, d.ContentType, d.Type, d.Body)
		}
		rec.add(d.MessageId)
		mu.Lock()
		order = append(order, d.MessageId)
		mu.Unlock()
		if err := d.Ack(false); err != nil {
			t.Errorf("ack: %v", err)
		}
	})
	waitFor(t, 10*time.Second, "all consumed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) >= n
	})
	cons.Close()
	for i := range n {
		if got := rec.count(fmt.Sprintf("rt-%d", i)); got != 1 {
			t.Errorf("rt-%d consumed %d times", i, got)
		}
	}
	if want := fmt.Sprintf("rt-%d", 0); order[0] != want {
		t.Errorf("first delivery %q, want %q", order[0], want)
	}
	if n := queueLen(t, c, "parley.fed.acme"); n != 0 {
		t.Fatalf("%d messages left after acking", n)
	}
}

// Closing a Consumer whose handler has not acked returns the delivery to the queue, and Close
// waits for the handler.
func TestConsumerCloseRequeues(t *testing.T) {
	t.Parallel()
	c := newConn(t, newVhost(t), "parley-test-requeue", nil)
	declare(t, c, federationTopology(0))
	p := NewPublisher(c)
	t.Cleanup(p.Close)
	if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, txn("rq")); err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	var handlerDone atomic.Bool
	cons := Consume(context.Background(), c, "parley.fed.acme", 1, func(ctx context.Context, d amqp091.Delivery) {
		close(got)
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond)
		handlerDone.Store(true)
	})
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery")
	}
	cons.Close()
	if !handlerDone.Load() {
		t.Fatal("Close returned before the handler")
	}
	d := getOne(t, c, "parley.fed.acme", 10*time.Second)
	if d.MessageId != "rq" || !d.Redelivered {
		t.Fatalf("got %q redelivered=%v, want rq redelivered", d.MessageId, d.Redelivered)
	}
}

func TestPublishErrors(t *testing.T) {
	t.Parallel()
	c := newConn(t, newVhost(t), "parley-test-publish", nil)
	declare(t, c, federationTopology(0))
	p := NewPublisher(c)
	t.Cleanup(p.Close)
	ctx := ctxTimeout(t, 30*time.Second)

	// Unroutable: an error only when mandatory.
	if err := p.Publish(ctx, "parley.federation", "nobody", true, txn("u1")); !errors.Is(err, ErrUnroutable) {
		t.Fatalf("mandatory unroutable: %v, want ErrUnroutable", err)
	}
	if err := p.Publish(ctx, "parley.federation", "nobody", false, txn("u2")); err != nil {
		t.Fatalf("non-mandatory unroutable: %v", err)
	}
	// A missing exchange closes the channel; the next publish gets a new one.
	err := p.Publish(ctx, "no.such.exchange", "acme", false, txn("x1"))
	var aerr *amqp091.Error
	if !errors.As(err, &aerr) || aerr.Code != amqp091.NotFound {
		t.Fatalf("publish to a missing exchange: %v, want NOT_FOUND", err)
	}
	if err := p.Publish(ctx, "parley.federation", "acme", true, txn("ok1")); err != nil {
		t.Fatalf("publish after a channel error: %v", err)
	}
	// An expired ctx is an error.
	expired, cancel := context.WithCancel(ctx)
	cancel()
	if err := p.Publish(expired, "parley.federation", "acme", true, txn("late")); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish with a done ctx: %v", err)
	}

	// Concurrent publishers, mandatory and not, routable and not: each gets its own outcome.
	var wg sync.WaitGroup
	var routed atomic.Int32
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				key, mandatory := "acme", g%2 == 0
				if i%5 == 0 {
					key = "nobody"
				}
				err := p.Publish(ctx, "parley.federation", key, mandatory, txn(fmt.Sprintf("c%d-%d", g, i)))
				switch {
				case key == "nobody" && mandatory:
					if !errors.Is(err, ErrUnroutable) {
						t.Errorf("c%d-%d: %v, want ErrUnroutable", g, i, err)
					}
				case err != nil:
					t.Errorf("c%d-%d: %v", g, i, err)
				case key == "acme":
					routed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got, want := queueLen(t, c, "parley.fed.acme"), int(routed.Load())+1; got != want {
		t.Fatalf("queue holds %d messages, want %d", got, want)
	}
	p.Close()
	if err := p.Publish(ctx, "parley.federation", "acme", true, txn("closed")); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after Close: %v, want ErrClosed", err)
	}
}

// A mandatory publish abandoned before its confirm (ctx expired) may still be returned later;
// that return must never be blamed on a later publish.
func TestAbandonedReturnNotMisattributed(t *testing.T) {
	t.Parallel()
	c := newConn(t, newVhost(t), "parley-test-abandoned", nil)
	declare(t, c, federationTopology(0))
	p := NewPublisher(c)
	t.Cleanup(p.Close)
	outcomes := map[string]int{}
	for i := range 200 {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			time.Sleep(time.Duration(i%20) * 25 * time.Microsecond)
			cancel()
		}()
		err := p.Publish(ctx, "parley.federation", "nobody", true, txn(fmt.Sprintf("lost-%d", i)))
		cancel()
		switch {
		case errors.Is(err, ErrUnroutable):
			outcomes["returned"]++
		case errors.Is(err, context.Canceled):
			outcomes["abandoned"]++
		default:
			t.Fatalf("unroutable publish %d: %v", i, err)
		}
		if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, txn(fmt.Sprintf("ok-%d", i))); err != nil {
			t.Fatalf("routable publish %d after an unroutable one: %v", i, err)
		}
	}
	t.Logf("unroutable publishes: %v", outcomes)
	if n := queueLen(t, c, "parley.fed.acme"); n != 200 {
		t.Fatalf("queue holds %d messages, want 200", n)
	}
}

// A message the handler refuses ends in the DLQ: via DeadLetter with x-parley-error and its
// properties intact, via Reject with the broker's x-death.
func TestDeadLetter(t *testing.T) {
	t.Parallel()
	c := newConn(t, newVhost(t), "parley-test-deadletter", nil)
	declare(t, c, federationTopology(0))
	p := NewPublisher(c)
	t.Cleanup(p.Close)

	bad := txn("bad-sig")
	bad.Headers = amqp091.Table{"x-custom": "kept"}
	bad.CorrelationId = "corr"
	bad.Expiration = "600000"
	if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, bad); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, txn("rejected")); err != nil {
		t.Fatal(err)
	}
	const reason = "M_FORBIDDEN: bad signature"
	var calls atomic.Int32
	cons := Consume(context.Background(), c, "parley.fed.acme", 5, func(ctx context.Context, d amqp091.Delivery) {
		calls.Add(1)
		switch d.MessageId {
		case "bad-sig":
			if err := DeadLetter(ctx, p, "parley.federation.dlx", d, reason); err != nil {
				t.Errorf("DeadLetter: %v", err)
			}
		default:
			if err := d.Reject(false); err != nil {
				t.Errorf("Reject: %v", err)
			}
		}
	})
	t.Cleanup(cons.Close)

	got := map[string]amqp091.Delivery{}
	for range 2 {
		d := getOne(t, c, "parley.fed.dlq", 10*time.Second)
		got[d.MessageId] = d
	}
	d, ok := got["bad-sig"]
	if !ok {
		t.Fatalf("bad-sig not in the DLQ: %v", slices.Collect(maps.Keys(got)))
	}
	if d.Headers[HeaderError] != reason {
		t.Errorf("x-parley-error = %v, want %q", d.Headers[HeaderError], reason)
	}
	if d.Headers["x-custom"] != "kept" || d.CorrelationId != "corr" || d.ContentType != "application/json" ||
		d.Type != "parley.txn.v1" || string(d.Body) != string(bad.Body) || d.DeliveryMode != amqp091.Persistent {
		t.Errorf("dead-lettered message changed: %+v", d)
	}
	if d.Expiration != "" || d.Headers[HeaderOriginalExpiration] != "600000" {
		t.Errorf("expiration %q, header %v", d.Expiration, d.Headers[HeaderOriginalExpiration])
	}
	if d.RoutingKey != "acme" {
		t.Errorf("routing key %q", d.RoutingKey)
	}
	r, ok := got["rejected"]
	if !ok {
		t.Fatal("rejected not in the DLQ")
	}
	if death := xDeath(t, r); death["reason"] != "rejected" || death["queue"] != "parley.fed.acme" {
		t.Errorf("x-death %v", death)
	}
	if _, ok := r.Headers[HeaderError]; ok {
		t.Error("x-parley-error on a message the broker dead-lettered")
	}
	if n := queueLen(t, c, "parley.fed.acme"); n != 0 {
		t.Fatalf("%d messages left in the inbox", n)
	}
	if calls.Load() != 2 {
		t.Fatalf("handler called %d times, want 2", calls.Load())
	}
}

// The delivery limit dead-letters a message that is nacked with requeue over and over, to the DLX
// with x-death: one bad message does not stall the queue forever.
func TestDeliveryLimit(t *testing.T) {
	t.Parallel()
	c := newConn(t, newVhost(t), "parley-test-limit", nil)
	const limit = 3
	declare(t, c, federationTopology(limit))
	p := NewPublisher(c)
	t.Cleanup(p.Close)
	if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, txn("poison")); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctxTimeout(t, 5*time.Second), "parley.federation", "acme", true, txn("good")); err != nil {
		t.Fatal(err)
	}
	var rec recorder
	cons := Consume(context.Background(), c, "parley.fed.acme", 1, func(ctx context.Context, d amqp091.Delivery) {
		rec.add(d.MessageId)
		if d.MessageId == "poison" {
			_ = d.Nack(false, true)
			return
		}
		_ = d.Ack(false)
	})
	t.Cleanup(cons.Close)
	d := getOne(t, c, "parley.fed.dlq", 20*time.Second)
	if d.MessageId != "poison" {
		t.Fatalf("DLQ got %q", d.MessageId)
	}
	if death := xDeath(t, d); death["reason"] != "delivery_limit" || death["queue"] != "parley.fed.acme" {
		t.Errorf("x-death %v", death)
	}
	if n := rec.count("poison"); n < limit || n > limit+1 {
		t.Errorf("poison delivered %d times, limit %d", n, limit)
	}
	waitFor(t, 5*time.Second, "good consumed", func() bool { return rec.count("good") == 1 })
}

// The broker kills the connection mid-stream, twice: the Conn reconnects, the Publisher and
// Consumer carry on, and every confirmed message is consumed at least once.
func TestReconnectMidStream(t *testing.T) {
	t.Parallel()
	u := newVhost(t)
	name := "parley-test-reconnect-" + randHex(4)
	var reconnects atomic.Int32
	c := newConn(t, u, name, func() { reconnects.Add(1) })
	declare(t, c, federationTopology(0))
	p := NewPublisher(c)
	t.Cleanup(p.Close)

	var rec recorder
	cons := Consume(context.Background(), c, "parley.fed.acme", 20, func(ctx context.Context, d amqp091.Delivery) {
		rec.add(d.MessageId)
		_ = d.Ack(false) // fails for deliveries of a dead channel: they come again
	})
	t.Cleanup(cons.Close)

	var (
		mu        sync.Mutex
		confirmed []string
		failures  atomic.Int32
		stop      = make(chan struct{})
		done      = make(chan struct{})
	)
	nConfirmed := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(confirmed)
	}
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			id := fmt.Sprintf("m%06d", i)
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := p.Publish(ctx, "parley.federation", "acme", true, txn(id))
				cancel()
				if err == nil {
					break
				}
				failures.Add(1)
				time.Sleep(5 * time.Millisecond)
			}
			mu.Lock()
			confirmed = append(confirmed, id)
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()

	for kill := 1; kill <= 2; kill++ {
		target := nConfirmed() + 100
		waitFor(t, 20*time.Second, "publishing", func() bool { return nConfirmed() >= target })
		before := reconnects.Load()
		killConnection(t, name)
		waitFor(t, 20*time.Second, "reconnect", func() bool { return reconnects.Load() > before && c.Connected() })
	}
	target := nConfirmed() + 100
	waitFor(t, 20*time.Second, "publishing after the reconnects", func() bool { return nConfirmed() >= target })
	close(stop)
	<-done

	mu.Lock()
	ids := slices.Clone(confirmed)
	mu.Unlock()
	waitFor(t, 30*time.Second, "every confirmed message consumed", func() bool {
		for _, id := range ids {
			if rec.count(id) == 0 {
				return false
			}
		}
		return true
	})
	dups := 0
	for _, id := range ids {
		dups += rec.count(id) - 1
	}
	t.Logf("%d messages confirmed, %d redelivered, %d failed publish attempts, %d connects",
		len(ids), dups, failures.Load(), reconnects.Load())
	if reconnects.Load() < 3 {
		t.Fatalf("%d connects, want 3", reconnects.Load())
	}
}

func xDeath(t *testing.T, d amqp091.Delivery) amqp091.Table {
	t.Helper()
	deaths, ok := d.Headers["x-death"].([]any)
	if !ok || len(deaths) == 0 {
		t.Fatalf("no x-death header: %v", d.Headers)
	}
	death, ok := deaths[0].(amqp091.Table)
	if !ok {
		t.Fatalf("x-death[0] is %T", deaths[0])
	}
	return death
}
