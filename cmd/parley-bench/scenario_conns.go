package main

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/client"
	"github.com/parley-chat/parley/cmd/parley-bench/internal/stats"
)

// fdMargin is how many descriptors a process keeps for itself (HTTP
// client, stdio, pipes, the runtime) besides the WebSocket connections.
const fdMargin = 256

// connShare is the slice of the connections one process opens: global
// indexes [Lo, Hi); connection g uses Tokens[g/connsPerUser - FirstUser].
type connShare struct {
	Lo        int      `json:"lo"`
	Hi        int      `json:"hi"`
	FirstUser int      `json:"first_user"`
	Tokens    []string `json:"tokens"`
}

// connsOutcome is what opening and holding connections gave.
type connsOutcome struct {
	ok, failed, notAttempted int64
	connect                  *stats.Histogram
	errs                     *errCounter
	dialSeconds              float64
	dropped                  int64
	dropErrs                 *errCounter
}

func newConnsOutcome() *connsOutcome {
	return &connsOutcome{connect: stats.New(), errs: newErrCounter(), dropErrs: newErrCounter()}
}

// connDialer opens and holds one share of the connections in this process.
type connDialer struct {
	e      *env
	t      client.Target
	share  connShare
	cpu    int
	conns  []*client.Conn
	out    *connsOutcome
	ok     atomic.Int64
	failed atomic.Int64
}

func newConnDialer(e *env, t client.Target, share connShare) *connDialer {
	return &connDialer{e: e, t: t, share: share, cpu: e.opt.connsPerUser,
		conns: make([]*client.Conn, share.Hi-share.Lo), out: newConnsOutcome()}
}

// dialAll opens the share's connections, at most conc at once, for at
// most bound; the ones not started by then are counted as not attempted.
func (d *connDialer) dialAll(ctx context.Context, bound time.Duration, conc int) {
	dctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	start := time.Now()
	forEach(dctx, len(d.conns), conc, func(i int) {
		g := d.share.Lo + i
		tok := d.share.Tokens[g/d.cpu-d.share.FirstUser]
		t0 := time.Now()
		c, err := d.e.dial(dctx, d.t, tok, nil)
		if err != nil {
			d.out.errs.add("connect", err)
			d.failed.Add(1)
			return
		}
		d.out.connect.Record(int64(time.Since(t0)))
		d.conns[i] = c
		d.ok.Add(1)
	})
	d.out.dialSeconds = time.Since(start).Seconds()
	d.out.ok, d.out.failed = d.ok.Load(), d.failed.Load()
	d.out.notAttempted = int64(len(d.conns)) - d.out.ok - d.out.failed
}

// countDropped counts held connections that the node (or the network) closed.
func (d *connDialer) countDropped() {
	var n int64
	for _, c := range d.conns {
		if c == nil {
			continue
		}
		if ce := c.Err(); ce != nil {
			n++
			d.out.dropErrs.add("dropped", ce)
		}
	}
	d.out.dropped = n
}

func (d *connDialer) open() int64 {
	var n int64
	for _, c := range d.conns {
		if c != nil && c.Err() == nil {
			n++
		}
	}
	return n
}

// runConns: N idle authenticated connections; node memory before and after.
func runConns(ctx context.Context, e *env) (*Report, error) {
	o := e.opt
	if o.child {
		return nil, runConnsChild(ctx, e)
	}
	started := time.Now()
	t := e.target(o.addr)
	base, _, err := t.URLs()
	if err != nil {
		return nil, fmt.Errorf("--addr: %w", err)
	}
	soft, _, _ := raiseFileLimit()
	capacity := int(soft) - fdMargin
	if capacity < 1 {
		return nil, fmt.Errorf("open-file limit %d leaves no room for connections", soft)
	}
	procs := o.procs
	if procs == 0 {
		procs = ceilDiv(o.conns, capacity)
	}
	if procs > maxProcs {
		return nil, fmt.Errorf("%d connections need %d processes at %d connections each (open-file limit %d); at most %d", o.conns, procs, capacity, soft, maxProcs)
	}
	if per := ceilDiv(o.conns, procs); per > capacity {
		return nil, fmt.Errorf("--procs %d puts %d connections in each process, over the %d one process can hold (open-file limit %d minus %d); use --procs %d or more",
			procs, per, capacity, soft, fdMargin, ceilDiv(o.conns, capacity))
	}

	nUsers := ceilDiv(o.conns, o.connsPerUser)
	users := make([]userSpec, nUsers)
	for i := range users {
		users[i] = userSpec{e.userName("c", i), t}
	}
	sessions, err := e.provisionUsers(ctx, "conns users", users)
	if err != nil {
		return nil, err
	}
	tokens := make([]string, len(sessions))
	for i, s := range sessions {
		tokens[i] = s.AccessToken
	}

	metricsURL := o.metricsURL
	if metricsURL == "" {
		metricsURL = base + "/metrics"
	}
	rep := newReport("conns", started, []string{o.addr})
	memBefore, memErr := e.rss(ctx, metricsURL)

	var out *connsOutcome
	var memAfter float64
	var memErr2 error
	afterConnect := func(open func() int64) {
		// settle, second memory reading, hold
		e.prog.Phase("conns settle", func() progressState { return progressState{Detail: fmt.Sprintf("open %d", open())} })
		sleepCtx(ctx, o.settle)
		memAfter, memErr2 = e.rss(ctx, metricsURL)
		holdStart := time.Now()
		e.prog.Phase("conns hold", func() progressState {
			return progressState{Done: int64(time.Since(holdStart) / time.Millisecond), Total: max(1, int64(o.hold/time.Millisecond)),
				HideCount: true, Detail: fmt.Sprintf("open %d", open())}
		})
		sleepCtx(ctx, o.hold)
	}
	if procs == 1 {
		d := newConnDialer(e, t, connShare{Lo: 0, Hi: o.conns, Tokens: tokens})
		e.prog.Phase("conns connect", func() progressState {
			return progressState{Done: d.ok.Load() + d.failed.Load(), Total: int64(o.conns), Detail: fmt.Sprintf("ok %d failed %d", d.ok.Load(), d.failed.Load())}
		})
		d.dialAll(ctx, o.duration, o.dialConc)
		afterConnect(d.open)
		d.countDropped()
		var closed atomic.Int64
		e.prog.Phase("conns close", func() progressState { return progressState{Done: closed.Load(), Total: d.out.ok} })
		closeAll(d.conns, &closed)
		out = d.out
	} else {
		out, err = runConnsProcs(ctx, e, procs, tokens, afterConnect)
		if err != nil {
			return nil, err
		}
	}
	rep.ElapsedS = time.Since(started).Seconds()

	rep.param("conns", o.conns)
	rep.param("conns-per-user", o.connsPerUser)
	rep.param("users", nUsers)
	rep.param("procs", procs)
	rep.param("dial-concurrency", o.dialConc)
	rep.param("source-ips", describeSourceIPs(e.sourceIPsFor(t)))
	rep.param("duration (connect bound)", o.duration)
	rep.param("hold", o.hold)
	rep.param("metrics-url", metricsURL)
	rep.param("user-prefix", o.userPrefix)
	if o.nodeLimits != "" { // new connections are limited per user at the send rate
		rep.param("node limits", o.nodeLimits)
	}

	rep.metric("connected", "connections opened", float64(out.ok), "")
	rep.metric("failed", "connections failed", float64(out.failed), "")
	rep.metric("not_attempted", "not attempted (duration ran out)", float64(out.notAttempted), "")
	rate := 0.0
	if out.dialSeconds > 0 {
		rate = float64(out.ok) / out.dialSeconds
	}
	rep.metric("connect_per_s", "connect rate", rate, "/s")
	rep.metric("connect_phase_s", "connect phase", out.dialSeconds, "s")
	rep.metric("dropped_during_hold", "dropped while held", float64(out.dropped), "")
	switch {
	case memErr != nil:
		rep.addNote("node memory not measured: %v", memErr)
	case memErr2 != nil:
		rep.addNote("node memory not measured after connecting: %v", memErr2)
	default:
		rep.metric("rss_before_bytes", "node RSS before", memBefore, "bytes")
		rep.metric("rss_after_bytes", "node RSS with connections open", memAfter, "bytes")
		rep.metric("rss_delta_bytes", "node RSS growth", memAfter-memBefore, "bytes")
		if out.ok > 0 {
			rep.metric("bytes_per_conn", "node memory per connection", (memAfter-memBefore)/float64(out.ok), "bytes")
		}
		rep.addNote("memory per connection is the growth of the node's process_resident_memory_bytes divided by the connections opened; the Go heap grows in steps, so small runs are noisy")
	}
	rep.latency("connect", "connect (TCP+upgrade+auth)", out.connect)
	errs := out.errs.snapshot()
	for k, v := range out.dropErrs.snapshot() {
		errs[k] += v
	}
	rep.Errors = errs
	var limited int64
	for k, v := range errs {
		if strings.Contains(k, "M_LIMIT_EXCEEDED") {
			limited += v
		}
	}
	if limited > 0 {
		rep.addNote("%d connections were refused with M_LIMIT_EXCEEDED: the node's limits bound this run, not its capacity. "+
			"Raise limits.connections_per_ip, limits.connections_per_user, limits.unauthenticated_connections and, for the connect rate per user, "+
			"limits.send_per_second and limits.send_burst (PARLEY_LIMITS_*), or spread the connections over more --source-ips and users (--conns-per-user)", limited)
	}
	if out.failed+out.notAttempted > 0 {
		rep.fail("%d of %d connections could not be opened", out.failed+out.notAttempted, o.conns)
	}
	if out.dropped > 0 {
		rep.fail("%d connections were dropped while held idle", out.dropped)
	}
	return rep, nil
}

func (e *env) rss(ctx context.Context, metricsURL string) (float64, error) {
	return e.metric(ctx, metricsURL, "process_resident_memory_bytes")
}

// metric reads one sample of a node's /metrics, within the request timeout.
func (e *env) metric(ctx context.Context, metricsURL, name string) (float64, error) {
	mctx, cancel := context.WithTimeout(ctx, e.opt.timeout)
	defer cancel()
	return client.FetchMetric(mctx, e.hc, metricsURL, name)
}
