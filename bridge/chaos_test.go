package bridge

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/internal/bridgetest"
	"github.com/parley-chat/parley/node/client"
)

// traffic drives both directions at once, until stopped: commands published by the test (as
// bridge irc) and messages sent by alice on a WebSocket, each retried idempotently until it
// succeeds (a publish until confirmed, a send until the node answers ok).
type traffic struct {
	e    *env
	stop chan struct{}
	done chan struct{}

	mu   sync.Mutex
	nCmd int // commands confirmed: c000 … c(nCmd-1)
	nWS  int // messages acked: w000 … w(nWS-1)
	errs []error
}

func startTraffic(e *env, connect func() (*client.Conn, error), pace time.Duration) *traffic {
	tr := &traffic{e: e, stop: make(chan struct{}), done: make(chan struct{})}
	stopped := func() bool {
		select {
		case <-tr.stop:
			return true
		default:
			return false
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; !stopped(); i++ {
			id := fmt.Sprintf("c%04d", i)
			for attempt := 0; ; attempt++ {
				err := e.tryPublish(e.user, id, cmd(id, fmt.Sprintf("@irc_u%d:%s", i%7, org), "cmd "+id))
				if err == nil {
					break
				}
				if attempt == 100 {
					tr.fail(err)
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			tr.mu.Lock()
			tr.nCmd++
			tr.mu.Unlock()
			time.Sleep(pace)
		}
	})
	wg.Go(func() {
		var ws *client.Conn
		defer func() {
			if ws != nil {
				ws.Close()
			}
		}()
		for i := 0; !stopped(); i++ {
			id := fmt.Sprintf("w%04d", i)
			for attempt := 0; ; attempt++ {
				if attempt == 100 {
					tr.fail(fmt.Errorf("%s not sent after 100 attempts", id))
					return
				}
				if ws == nil {
					var err error
					if ws, err = connect(); err != nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
				}
				ctx, cancel := contextTimeout(10 * time.Second)
				_, err := ws.Send(ctx, e.lobby, id, "ws "+id)
				cancel()
				if err == nil {
					break
				}
				var perr *client.Error
				if !errors.As(err, &perr) { // the connection is gone (its node stopped): another one
					ws.Close()
					ws = nil
				}
				time.Sleep(50 * time.Millisecond) // M_UNAVAILABLE during a failover: same txn_id again
			}
			tr.mu.Lock()
			tr.nWS++
			tr.mu.Unlock()
			time.Sleep(3 * pace)
		}
	})
	go func() {
		wg.Wait()
		close(tr.done)
	}()
	return tr
}

func (tr *traffic) fail(err error) {
	tr.mu.Lock()
	tr.errs = append(tr.errs, err)
	tr.mu.Unlock()
}

func (tr *traffic) count() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.nCmd + tr.nWS
}

// more waits until n more items were sent than now.
func (tr *traffic) more(t *testing.T, n int) {
	t.Helper()
	target := tr.count() + n
	bridgetest.WaitFor(t, 60*time.Second, fmt.Sprintf("%d sent", target), func() bool {
		tr.mu.Lock()
		failed := len(tr.errs) > 0
		tr.mu.Unlock()
		if failed {
			t.Fatalf("traffic failed: %v", tr.errs)
		}
		return tr.count() >= target
	})
}

// finish waits for the traffic to end and then checks that every command and every message
// is in the room exactly once, and that the bridge's queue got every message event of the
// room: none lost, in stream order once repeats (same event_id) are dropped.
func (tr *traffic) finish(t *testing.T, q *eventsQueue) {
	t.Helper()
	close(tr.stop)
	select {
	case <-tr.done:
	case <-time.After(120 * time.Second):
		t.Fatal("traffic did not finish")
	}
	if len(tr.errs) > 0 {
		t.Fatalf("traffic failed: %v", tr.errs)
	}
	e := tr.e
	want := map[string]bool{}
	for i := range tr.nCmd {
		want[fmt.Sprintf("cmd c%04d", i)] = true
	}
	for i := range tr.nWS {
		want[fmt.Sprintf("ws w%04d", i)] = true
	}
	var got map[string]int
	bridgetest.WaitFor(t, 60*time.Second, "every command applied", func() bool {
		got = e.bodies(e.lobby)
		for b := range want {
			if got[b] == 0 {
				return false
			}
		}
		return true
	})
	for b, n := range got {
		if n != 1 || !want[b] {
			t.Errorf("%q is in the room %d times", b, n)
		}
	}
	// Every message event of the room reaches the bridge's queue.
	var ids []string
	pos := map[string]float64{}
	for _, ev := range e.history(e.lobby) {
		if ev["type"] == "m.room.message" {
			id := ev["event_id"].(string)
			ids = append(ids, id)
			pos[id] = ev["stream_pos"].(float64)
		}
	}
	var msgs []amqp091.Delivery
	bridgetest.WaitFor(t, 60*time.Second, "every message event on the events exchange", func() bool {
		msgs = q.snapshot()
		seen := map[string]bool{}
		for _, d := range msgs {
			seen[d.MessageId] = true
		}
		for _, id := range ids {
			if !seen[id] {
				return false
			}
		}
		return true
	})
	seen := map[string]bool{}
	var order []float64
	repeats := 0
	for _, d := range msgs {
		if seen[d.MessageId] {
			repeats++
			continue
		}
		seen[d.MessageId] = true
		if p, ok := pos[d.MessageId]; ok {
			order = append(order, p)
		}
	}
	if !sort.Float64sAreSorted(order) {
		t.Errorf("message events out of stream order (repeats dropped)")
	}
	t.Logf("%d commands and %d WebSocket messages applied once each; %d message events published, %d repeats (at least once)",
		tr.nCmd, tr.nWS, len(ids), repeats)
}

// The broker closes the node's bridge connection twice while commands stream in and events
// stream out: no command is lost or applied twice, no event is lost or reordered.
func TestBrokerClosesConnectionMidStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	q := e.bindEvents(RoutingKey(e.lobby, "m.room.message"))
	tr := startTraffic(e, e.connectTo(func() *bridgetest.Node { return e.nodes[0] }), 5*time.Millisecond)
	for range 2 {
		pid := bridgetest.ConnectionPID(t, e.connName(0))
		tr.more(t, 100)
		bridgetest.CloseConnection(t, pid)
		t.Logf("closed the bridge connection after %d sent", tr.count())
		bridgetest.WaitFor(t, 20*time.Second, "a new bridge connection", func() bool { return e.svcs[0].conn.Connected() })
	}
	tr.more(t, 100)
	tr.finish(t, q)
	e.expectNoDeadLetters()
}

// The leader stops while commands stream in and events stream out; the next leader's bridge
// service takes over from the cursor in the Raft log: nothing lost, nothing applied twice.
func TestLeaderFailover(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withNodes(3))
	leader := bridgetest.WaitLeader(t, e.nodes)
	var target atomic.Pointer[bridgetest.Node] // where alice's messages go: never the leader
	for _, n := range e.nodes {
		if n != leader {
			target.Store(n)
			break
		}
	}
	e.alice = e.dial(target.Load(), e.token)
	q := e.bindEvents(RoutingKey(e.lobby, "m.room.message"))
	tr := startTraffic(e, e.connectTo(target.Load), 5*time.Millisecond)
	tr.more(t, 100)
	leader = bridgetest.WaitLeader(t, e.nodes)
	for i, n := range e.nodes {
		if n == leader {
			if n == target.Load() { // leadership moved there meanwhile
				target.Store(e.nodes[(i+1)%len(e.nodes)])
			}
			e.svcs[i].Close()
			n.Stop()
		}
	}
	t.Logf("stopped the leader after %d sent", tr.count())
	e.alice = e.dial(target.Load(), e.token)
	tr.more(t, 100)
	tr.finish(t, q)
	e.expectNoDeadLetters()
}
