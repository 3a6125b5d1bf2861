package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Sends beyond the backlog wait until the slowest subscriber catches up; a send given back
// frees its place at once; close ends the refill goroutine.
func TestBacklogHoldsSendsUntilDelivered(t *testing.T) {
	defer goleak.VerifyNone(t)
	var delivered atomic.Int64
	b := startBacklog(3, delivered.Load)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if !b.acquire(ctx) {
			t.Fatal("a send within the backlog was refused")
		}
	}
	got := make(chan bool, 1)
	go func() { got <- b.acquire(ctx) }()
	select {
	case <-got:
		t.Fatal("a fourth send went ahead with nothing delivered")
	case <-time.After(20 * backlogPoll):
	}
	delivered.Add(1)
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("acquire failed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a delivery did not free a place")
	}
	b.release() // a failed send
	if !b.acquire(ctx) {
		t.Fatal("a released place was not reusable")
	}
	cctx, cancel := context.WithTimeout(ctx, 10*backlogPoll)
	defer cancel()
	if b.acquire(cctx) {
		t.Fatal("acquired beyond the backlog")
	}
	b.close()
	var none *backlog // unbounded
	if !none.acquire(ctx) {
		t.Fatal("an unbounded backlog waited")
	}
	none.release()
	none.close()
}
