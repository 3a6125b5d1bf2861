package main

import (
	"context"
	"time"
)

// runFanout: S subscribers in one public room, P publishers sending as fast
// as the node lets them (each keeps --window sends in flight), bounded by
// --duration and --max-msgs. Headline: deliveries/s.
func runFanout(ctx context.Context, e *env) (*Report, error) {
	o := e.opt
	t := e.target(o.addr)
	spec := roomSpec{
		label: "fanout", pubTargets: targets(t), subTargets: targets(t),
		pubs: o.pubs, subs: o.subs, connsPerUser: o.connsPerUser, pubRole: "p", subRole: "s",
		window: o.window, maxBacklog: o.maxBacklog, maxMsgs: o.maxMsgs,
		duration: o.duration, grace: o.grace, warmup: o.warmup, joinTimeout: o.joinTimeout, bodySize: o.bodySize,
	}
	return runRoomScenario(ctx, e, spec, []string{o.addr}, func(rep *Report, rb *roomBench, r roomResult) {
		rep.metric("deliveries_per_s", "deliveries/s (pushes received by all subscribers)", r.deliveriesPerSecond, "/s")
		rep.metric("send_ok_per_s", "send ok rate (all publishers)", r.okPerSecond, "/s")
	})
}

// runRoomScenario is the shared skeleton: setup, warm-up, run, drain,
// report, close. headline adds the scenario's own first rows.
func runRoomScenario(ctx context.Context, e *env, spec roomSpec, targetNames []string, headline func(*Report, *roomBench, roomResult)) (*Report, error) {
	rb := newRoomBench(e, spec)
	defer rb.close()
	if err := rb.setup(ctx); err != nil {
		return nil, err
	}
	rb.warmUp(ctx)
	rb.run(ctx)
	r := rb.result()
	rep := newReport(e.opt.scenario, rb.started, targetNames)
	rep.ElapsedS = time.Since(rb.started).Seconds()
	rb.addParams(rep)
	headline(rep, rb, r)
	rb.addCommon(rep, r)
	rb.machine.report(rep)
	rep.metric("warmup_s", "warm-up", rb.warmupDur.Seconds(), "s")
	return rep, nil
}
