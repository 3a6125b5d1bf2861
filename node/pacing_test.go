package node

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// recordingConn notes when each Write happened and how many bytes it carried.
type recordingConn struct {
	net.Conn
	mu     sync.Mutex
	writes []time.Time
	sizes  []int
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, time.Now())
	c.sizes = append(c.sizes, len(b))
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *recordingConn) snapshot() ([]time.Time, []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.writes...), append([]int(nil), c.sizes...)
}

func (c *recordingConn) bytes() int {
	_, sizes := c.snapshot()
	n := 0
	for _, sz := range sizes {
		n += sz
	}
	return n
}

func pacingServer(delay time.Duration) *Server {
	return &Server{opts: Options{SendQueue: 1 << 16, WriteDelay: delay}, metrics: newMetrics(),
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// pipeSession is a session over net.Pipe (every write waits for the reader); drain says
// whether its client reads.
func pipeSession(t *testing.T, srv *Server, drain bool) (*session, *recordingConn) {
	t.Helper()
	server, client := net.Pipe()
	t.Cleanup(func() { server.Close(); client.Close() })
	if drain {
		go func() { _, _ = io.Copy(io.Discard, client) }()
	}
	rc := &recordingConn{Conn: server}
	s := &session{srv: srv, raw: rc, wlock: make(chan struct{}, 1), urgent: make(chan struct{}, 1), log: srv.log,
		done: make(chan struct{})}
	return s, rc
}

func TestWritesPacedPushesAndNotReplies(t *testing.T) {
	const delay = 80 * time.Millisecond
	s, rc := pipeSession(t, pacingServer(delay), true)

	// The first writeBurst pushes, one at a time, leave at once: a burst is allowed.
	start := time.Now()
	for i := 1; i <= writeBurst; i++ {
		pushed := time.Now()
		s.pushEvent(int64(i), textFrame([]byte(`{"n":1}`)))
		waitFor(t, func() bool { w, _ := rc.snapshot(); return len(w) == i })
		if d := time.Since(pushed); d > delay/2 {
			t.Fatalf("push %d of the first %d waited %v; it should leave at once", i, writeBurst, d)
		}
	}
	if d := time.Since(start); d > delay {
		t.Fatalf("the first %d writes took %v", writeBurst, d)
	}
	// The burst is spent: pushes now wait for the connection's slot and leave together.
	for i := 0; i < 5; i++ {
		s.pushEvent(int64(writeBurst+1+i), textFrame([]byte(`{"n":2}`)))
	}
	waitFor(t, func() bool { w, _ := rc.snapshot(); return len(w) == writeBurst+1 })
	w, sizes := rc.snapshot()
	if gap := w[writeBurst].Sub(w[0]); gap < delay-5*time.Millisecond {
		t.Fatalf("write %d came %v after the first; after a burst of %d the pace is one per %v", writeBurst+1, gap, writeBurst, delay)
	}
	if one := len(textFrame([]byte(`{"n":2}`))); sizes[writeBurst] != 5*one {
		t.Fatalf("the paced write carried %d bytes, want the 5 queued frames (%d)", sizes[writeBurst], 5*one)
	}

	// A reply right after a write does not wait for the slot, and takes the queued push along.
	s.pushEvent(100, textFrame([]byte(`{"n":3}`)))
	time.Sleep(5 * time.Millisecond)
	replyAt := time.Now()
	s.reply([]byte(`{"op":"ok","id":"1"}`))
	waitFor(t, func() bool { w, _ := rc.snapshot(); return len(w) == writeBurst+2 })
	w, sizes = rc.snapshot()
	if d := w[writeBurst+1].Sub(replyAt); d > delay/2 {
		t.Fatalf("a reply waited %v for the pacing slot", d)
	}
	if want := len(textFrame([]byte(`{"n":3}`))) + len(textFrame([]byte(`{"op":"ok","id":"1"}`))); sizes[writeBurst+1] != want {
		t.Fatalf("the reply's write carried %d bytes, want the push and the reply (%d)", sizes[writeBurst+1], want)
	}
	s.writers.Wait()
}

// Pushes that arrive about once per slot, with jitter (a busy room at 100 events/s), are not
// held back: with a strict one-write-per-slot rule their lag behind the slot chain drifts
// like a random walk (5 ms on average was measured at 100 events/s); the burst allowance
// absorbs it. Pushes arriving faster than the pace are still held to one write per delay.
func TestPacingAbsorbsJitterAndHoldsThePace(t *testing.T) {
	const delay = 10 * time.Millisecond
	simulate := func(interval time.Duration, n int) (avgWait time.Duration, writes int) {
		rng := rand.New(rand.NewPCG(1, 2))
		var tat time.Time
		now := time.Unix(0, 0)
		var total time.Duration
		for i := 0; i < n; i++ {
			jitter := time.Duration(rng.NormFloat64() * float64(time.Millisecond))
			arrive := time.Unix(0, 0).Add(time.Duration(i)*interval + jitter)
			if arrive.Before(now) {
				arrive = now // still queued behind the previous write: they would leave together
			}
			at := arrive
			if w := paceWait(tat, arrive, delay); w > 0 {
				at = arrive.Add(w)
			}
			total += at.Sub(arrive)
			tat = paceAfterWrite(tat, at, delay)
			now = at
			writes++
		}
		return total / time.Duration(n), writes
	}
	if avg, _ := simulate(delay, 10000); avg > delay/20 {
		t.Fatalf("pushes one slot apart with 1 ms jitter waited %v on average", avg)
	}
	// Four times faster than the pace: the writes happen at the pace, each taking several.
	elapsed := 10000 * delay / 4
	var tat time.Time
	writes := 0
	for at := time.Unix(0, 0); at.Before(time.Unix(0, 0).Add(elapsed)); {
		if w := paceWait(tat, at, delay); w > 0 {
			at = at.Add(w)
		}
		tat = paceAfterWrite(tat, at, delay)
		writes++
	}
	if max := int(elapsed/delay) + writeBurst; writes > max {
		t.Fatalf("%d writes in %v at a pace of one per %v (at most %d)", writes, elapsed, delay, max)
	}
}

// A writer with nothing more to send ends after its write instead of sleeping out the slot:
// at a steady rate that sleep cost a timer and a wake-up per write and found nothing.
func TestWriterEndsWhenNothingIsPending(t *testing.T) {
	const delay = time.Second
	s, rc := pipeSession(t, pacingServer(delay), true)
	s.pushEvent(1, textFrame([]byte(`{"n":1}`)))
	waitFor(t, func() bool { w, _ := rc.snapshot(); return len(w) == 1 })
	ended := make(chan struct{})
	go func() { s.writers.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(delay / 2):
		t.Fatal("the writer is still waiting for its pacing slot with nothing to send")
	}
	s.writers.Wait()
}

// Clients that stop reading hold only their own writer: a reading client keeps getting its
// pushes while twenty others sit on full sockets.
func TestStuckClientsDoNotDelayOthers(t *testing.T) {
	srv := pacingServer(0)
	var stuck []*session
	for range 20 {
		s, _ := pipeSession(t, srv, false)
		s.pushEvent(1, textFrame(make([]byte, 1000)))
		stuck = append(stuck, s)
	}
	live, rc := pipeSession(t, srv, true)
	start := time.Now()
	for i := 1; i <= 50; i++ {
		live.pushEvent(int64(i), textFrame([]byte(`{"x":1}`)))
		time.Sleep(time.Millisecond)
	}
	want := 50 * len(textFrame([]byte(`{"x":1}`)))
	waitFor(t, func() bool { return rc.bytes() == want })
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the reading client got its pushes only after %v", d)
	}
	for _, s := range stuck { // end the blocked writes so their writers finish
		s.raw.Close()
	}
	for _, s := range stuck {
		s.writers.Wait()
	}
	live.writers.Wait()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}
