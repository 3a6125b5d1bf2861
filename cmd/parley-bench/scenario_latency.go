package main

import "context"

// runLatency: a fixed send rate (--rate, spread over --pubs publishers,
// open loop) into a room with --subs subscribers. Every body carries its
// sequence number and send time; each push gives one send→push sample.
func runLatency(ctx context.Context, e *env) (*Report, error) {
	o := e.opt
	t := e.target(o.addr)
	spec := roomSpec{
		label: "latency", pubTargets: targets(t), subTargets: targets(t),
		pubs: o.pubs, subs: o.subs, connsPerUser: o.connsPerUser, pubRole: "p", subRole: "s",
		openLoop: true, rate: float64(o.rate), maxMsgs: o.maxMsgs, maxInflight: o.maxInflight,
		duration: o.duration, grace: o.grace, warmup: o.warmup, joinTimeout: o.joinTimeout, bodySize: o.bodySize,
	}
	return runRoomScenario(ctx, e, spec, []string{o.addr}, func(rep *Report, rb *roomBench, r roomResult) {
		s := rb.lat.Summarize(1e6)
		rep.metric("push_p50_ms", "send→push p50", s.P50, "ms")
		rep.metric("push_p90_ms", "send→push p90", s.P90, "ms")
		rep.metric("push_p99_ms", "send→push p99", s.P99, "ms")
		rep.metric("push_p999_ms", "send→push p99.9", s.P999, "ms")
		rep.metric("push_max_ms", "send→push max", s.Max, "ms")
		rep.metric("push_count", "send→push samples", float64(s.Count), "")
		rep.metric("lost", "lost (expected, not seen after grace)", float64(r.lost), "")
		rep.metric("duplicates", "duplicates", float64(r.dups), "")
	})
}
