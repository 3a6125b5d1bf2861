package node

import (
	"io"
	"log/slog"
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

	start := time.Now()
	s.pushEvent(1, textFrame([]byte(`{"n":1}`))) // after a quiet spell: at once
	waitFor(t, func() bool { w, _ := rc.snapshot(); return len(w) == 1 })
	if d := time.Since(start); d > delay/2 {
		t.Fatalf("the first push waited %v; it should leave at once", d)
	}
	for i := 2; i <= 6; i++ { // inside the slot: they wait and leave together
		s.pushEvent(int64(i), textFrame([]byte(`{"n":2}`)))
	}
	waitFor(t, func() bool { w, _ := rc.snapshot(); return len(w) == 2 })
	w, sizes := rc.snapshot()
	if gap := w[1].Sub(w[0]); gap < delay-5*time.Millisecond {
		t.Fatalf("second write %v after the first; pacing is %v", gap, delay)
	}
	if one := len(textFrame([]byte(`{"n":2}`))); sizes[1] != 5*one {
		t.Fatalf("second write carried %d bytes, want the 5 queued frames (%d)", sizes[1], 5*one)
	}

	// A reply right after a write does not wait for the slot, and takes the queued push along.
	s.pushEvent(7, textFrame([]byte(`{"n":3}`)))
	time.Sleep(5 * time.Millisecond)
	replyAt := time.Now()
	s.reply([]byte(`{"op":"ok","id":"1"}`))
	waitFor(t, func() bool { w, _ := rc.snapshot(); return len(w) == 3 })
	w, sizes = rc.snapshot()
	if d := w[2].Sub(replyAt); d > delay/2 {
		t.Fatalf("a reply waited %v for the pacing slot", d)
	}
	if want := len(textFrame([]byte(`{"n":3}`))) + len(textFrame([]byte(`{"op":"ok","id":"1"}`))); sizes[2] != want {
		t.Fatalf("the reply's write carried %d bytes, want the push and the reply (%d)", sizes[2], want)
	}
	s.writers.Wait()
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
	// The slot still holds for the next push: it waits for the rest of it.
	s.pushEvent(2, textFrame([]byte(`{"n":2}`)))
	waitFor(t, func() bool { w, _ := rc.snapshot(); return len(w) == 2 })
	w, _ := rc.snapshot()
	if gap := w[1].Sub(w[0]); gap < delay-50*time.Millisecond {
		t.Fatalf("second write %v after the first; pacing is %v", gap, delay)
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
