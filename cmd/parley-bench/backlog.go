package main

import (
	"context"
	"math"
	"time"
)

// backlog bounds how far publishers may run ahead of the slowest subscriber: a send takes a
// token, and tokens come back as the slowest live subscriber receives messages. Without it a
// load tool that sends faster than the node can push measures the node's socket buffers
// filling (send→push delays of seconds, then slow-consumer disconnects), not a delivery rate
// the subscribers keep up with.
type backlog struct {
	tokens    chan struct{}
	delivered func() int64 // messages the slowest live subscriber has received
	stop      chan struct{}
	done      chan struct{}
}

// backlogPoll is how often the subscribers' progress is read while the run lasts.
const backlogPoll = 500 * time.Microsecond

// startBacklog allows limit undelivered messages; nil (no bound) when limit <= 0.
func startBacklog(limit int, delivered func() int64) *backlog {
	if limit <= 0 {
		return nil
	}
	b := &backlog{tokens: make(chan struct{}, limit), delivered: delivered,
		stop: make(chan struct{}), done: make(chan struct{})}
	for range limit {
		b.tokens <- struct{}{}
	}
	go b.refill()
	return b
}

func (b *backlog) refill() {
	defer close(b.done)
	last := b.delivered()
	t := time.NewTicker(backlogPoll)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		now := b.delivered()
		for ; last < now; last++ {
			select {
			case b.tokens <- struct{}{}:
			default: // full: a token given back for a failed send already stands for it
			}
		}
	}
}

// acquire waits for a token; false when ctx ends first. A nil backlog never waits.
func (b *backlog) acquire(ctx context.Context) bool {
	if b == nil {
		return ctx.Err() == nil
	}
	select {
	case <-b.tokens:
		return true
	case <-ctx.Done():
		return false
	}
}

// release gives back the token of a send that will not be delivered (refused, failed).
func (b *backlog) release() {
	if b == nil {
		return
	}
	select {
	case b.tokens <- struct{}{}:
	default:
	}
}

// close stops the refill goroutine and waits for it.
func (b *backlog) close() {
	if b == nil {
		return
	}
	close(b.stop)
	<-b.done
}

// slowestDelivered is how many run messages the slowest subscriber still connected has
// received; subscribers the node disconnected are left out (they would hold everyone back).
func (rb *roomBench) slowestDelivered() int64 {
	low := int64(math.MaxInt64)
	for _, s := range rb.subs {
		if s == nil || s.conn == nil {
			continue
		}
		select {
		case <-s.conn.Done():
			continue
		default:
		}
		if u := s.unique.Load(); u < low {
			low = u
		}
	}
	if low == math.MaxInt64 {
		return rb.ok.Load() // nobody left to wait for
	}
	return low
}
