package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/stats"
)

// Bounds of the machine scenario's probes: each takes well under a second on any machine
// the figures are meant for.
const (
	probeSyscalls   = 200_000
	probePages      = 32 << 10 // 128 MiB of 4 KiB pages
	probeRoundTrips = 5_000
	probeFsyncs     = 300
)

// machineCosts is what the machine's kernel charged for each primitive.
type machineCosts struct {
	syscall   time.Duration    // one system call that does nothing (getpid)
	pageFault time.Duration    // the first touch of a page of new anonymous memory
	roundTrip time.Duration    // a byte over a pipe to a thread and back: two wake-ups
	fsync     *stats.Histogram // a 4 KiB write and fsync in --dir, nanoseconds
}

// runMachine: what this machine's kernel charges for what every event pays on a node, so
// that figures taken on different machines can be told apart: a system call, a new page of
// memory, a thread wake-up, a write with its fsync. It talks to no node. The same code runs
// several times more slowly on one VM than another when these primitives cost more
// (docs/performance.md, the 2026-12-06 round).
func runMachine(ctx context.Context, e *env) (*Report, error) {
	dir := e.opt.dir
	if dir == "" {
		dir = os.TempDir()
	}
	started := time.Now()
	host, _ := os.Hostname()
	rep := newReport("machine", started, []string{"this machine (" + host + ")"})
	rep.param("GOMAXPROCS", runtime.GOMAXPROCS(0))
	rep.param("CPUs", runtime.NumCPU())
	rep.param("fsync dir", dir)
	c, err := probeMachine(ctx, dir)
	if errors.Is(err, errors.ErrUnsupported) {
		return nil, fmt.Errorf("the machine probes need Linux, macOS or FreeBSD: %w", err)
	}
	if err != nil {
		return nil, err
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	rep.metric("syscall_us", "system call (getpid)", us(c.syscall), "µs")
	rep.metric("page_fault_us", "first touch of a new 4 KiB page", us(c.pageFault), "µs")
	rep.metric("thread_round_trip_us", "pipe round trip between two threads (two wake-ups)", us(c.roundTrip), "µs")
	s := c.fsync.Summarize(1e3)
	rep.metric("fsync_p50_us", "4 KiB write + fsync p50", s.P50, "µs")
	rep.metric("fsync_p99_us", "4 KiB write + fsync p99", s.P99, "µs")
	rep.latency("fsync", "4 KiB write + fsync", c.fsync)
	rep.ElapsedS = time.Since(started).Seconds()
	return rep, nil
}
