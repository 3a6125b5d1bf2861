package node

import (
	"errors"
	"runtime"
	"sync"
	"time"
)

// writePool writes pushes and replies from a few long-lived goroutines.
//
// Without it every connection with something to send starts a writer goroutine, so one event
// to a room of 1,000 makes 1,000 goroutines runnable at once. Go's scheduler runs them in
// order, and a goroutine woken meanwhile (a Raft message, a forwarded commit, the next send
// being read) waits behind all of them: on a busy follower each hop of the commit path paid
// up to the whole fan-out's worth of write(2) calls. The pool's workers take connections in
// arrival order and write what each has queued with a write that never waits (writeNow); the
// rest of the node's goroutines run beside them.
//
// A worker never blocks on one client: a connection whose socket buffer is full, whose pacing
// slot has not come yet (ws.write_delay_ms), or that cannot be written without waiting at all
// (TLS) is handed to a writer goroutine of its own (session.flush), as before the pool.
type writePool struct {
	mu      sync.Mutex
	ready   sync.Cond
	queue   []*session // each session at most once: its writing flag is set while queued
	closed  bool
	workers sync.WaitGroup
}

// newWritePool starts the workers; 0 means half the CPUs Go uses, at least one. Writes are
// most of a busy node's work, and a core they leave free keeps the commit path (reading
// sends, Raft, forwarding) from waiting behind them: on two cores, a 3-node cluster's p99 at
// 100 events/s to 1,000 subscribers went from 50-78 to 30-35 ms (docs/performance.md).
func newWritePool(workers int) *writePool {
	if workers < 1 {
		workers = max(1, runtime.GOMAXPROCS(0)/2)
	}
	p := &writePool{}
	p.ready.L = &p.mu
	p.workers.Add(workers)
	for range workers {
		go p.work()
	}
	return p
}

// schedule queues a session whose writer role the caller holds; false once the pool is
// closed, and the caller writes on its own goroutine instead.
func (p *writePool) schedule(s *session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.queue = append(p.queue, s)
	p.ready.Signal()
	return true
}

func (p *writePool) work() {
	defer p.workers.Done()
	for {
		p.mu.Lock()
		for len(p.queue) == 0 && !p.closed {
			p.ready.Wait()
		}
		if len(p.queue) == 0 { // closed and drained
			p.mu.Unlock()
			return
		}
		s := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		if len(p.queue) == 0 {
			p.queue = p.queue[:0:0] // let a burst's backing array go
		}
		p.mu.Unlock()
		s.writeQueued(p)
	}
}

// close lets the workers finish what is queued, then stops them.
func (p *writePool) close() {
	p.mu.Lock()
	p.closed = true
	p.ready.Broadcast()
	p.mu.Unlock()
	p.workers.Wait()
}

// errWouldBlock: the socket's send buffer is full; the rest waits for a writer of its own.
var errWouldBlock = errors.New("node: socket send buffer full")

// writeQueued is a pool worker's turn at s: everything s has queued goes out in one write that
// does not wait, and s goes back in the queue if more arrived meanwhile. Whatever would have
// to wait (the pacing slot, a full socket, the write lock held by a close) is handed to a
// writer goroutine of s's own, which takes over the writer role and its count in s.writers.
func (s *session) writeQueued(p *writePool) {
	select {
	case s.wlock <- struct{}{}:
	default: // a close frame is being written: wait for it on a goroutine of s's own
		go s.flush()
		return
	}
	now := time.Now()
	if d := s.srv.opts.WriteDelay; d > 0 && paceWait(s.writeTAT, now, d) > 0 {
		<-s.wlock
		go s.flush()
		return
	}
	batch := s.takePending()
	if batch == nil {
		<-s.wlock
		s.writers.Done()
		return
	}
	bp := joinFrames(batch)
	s.moveWriteDeadline(now)
	n, err := writeNow(s.rawSys, *bp)
	if n > 0 {
		s.paced(now)
	}
	putWriteBuf(bp)
	if errors.Is(err, errWouldBlock) {
		// The rest is written by a goroutine of s's own, which inherits the write lock:
		// nothing (a close frame) may come between the parts of a frame.
		go s.flushRest(batch, n)
		return
	}
	if err != nil {
		s.torn = true
	}
	<-s.wlock
	switch {
	case err != nil:
		s.writeFailed()
		s.writers.Done()
		return
	}
	s.srv.metrics.framesOut.Add(float64(len(batch)))
	if !s.keepWriting() {
		s.writers.Done()
		return
	}
	if !p.schedule(s) {
		go s.flush()
	}
}

// flushRest finishes a write the socket took only part of (the first n bytes of batch),
// waiting as a writer goroutine does, then carries on as s's writer (flush). The caller
// holds the write lock and hands it over; flushRest releases it.
func (s *session) flushRest(batch []frame, n int) {
	err := s.writeRestLocked(batch, n)
	<-s.wlock
	if err != nil {
		s.writeFailed()
		s.writers.Done()
		return
	}
	s.srv.metrics.framesOut.Add(float64(len(batch)))
	s.flush()
}
