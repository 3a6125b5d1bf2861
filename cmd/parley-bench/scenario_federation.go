package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// runFederation: a public room with an alias on org A (--addr); users of
// org B (--peer-addr) join it by "#alias:orgA"; publishers on A send at
// --rate; the B subscribers measure A send → B push latency.
func runFederation(ctx context.Context, e *env) (*Report, error) {
	o := e.opt
	alias := o.alias
	if alias == "" {
		alias = strings.ReplaceAll(o.userPrefix, "=", "-") + "-fed-" + e.runID
	}
	spec := roomSpec{
		label: "federation", pubTargets: targets(e.target(o.addr)), subTargets: targets(e.target(o.peerAddr)),
		pubs: o.pubs, subs: o.subs, connsPerUser: o.connsPerUser, pubRole: "a", subRole: "b",
		openLoop: true, rate: float64(o.rate), maxMsgs: o.maxMsgs, maxInflight: o.maxInflight,
		duration: o.duration, grace: o.grace, warmup: o.warmup, joinTimeout: o.joinTimeout, bodySize: o.bodySize,
		alias: alias, joinByAlias: true, okToPush: true,
	}
	rep, err := runRoomScenario(ctx, e, spec, []string{o.addr, o.peerAddr}, func(rep *Report, rb *roomBench, r roomResult) {
		rep.param("org A", rb.pubOrg)
		rep.param("org B", rb.subOrg)
		rep.param("alias", rb.joinRef)
		s := rb.lat.Summarize(1e6)
		rep.metric("fed_p50_ms", "A send → B push p50", s.P50, "ms")
		rep.metric("fed_p99_ms", "A send → B push p99", s.P99, "ms")
		rep.metric("fed_max_ms", "A send → B push max", s.Max, "ms")
		// The relay's own lag: from the moment A answered ok (the event committed there).
		okPush, early := rb.okPushResult()
		relay := okPush.Summarize(1e6)
		rep.metric("fed_ok_push_p50_ms", "A ok → B push p50", relay.P50, "ms")
		rep.metric("fed_ok_push_p99_ms", "A ok → B push p99", relay.P99, "ms")
		rep.latency("ok_push", "A ok → B push", okPush)
		if early > 0 {
			rep.addNote("%d pushes on B were read before the ok of their send on A, and count as 0 in A ok → B push", early)
		}
		rep.metric("lost", "lost on B (acked on A, not seen on B after grace)", float64(r.lost), "")
	})
	var ue *unavailableError
	if errors.As(err, &ue) {
		return nil, fmt.Errorf("federation unavailable: %w\n"+
			"the node of org B (--peer-addr %s) answered M_UNAVAILABLE when joining the room of org A: "+
			"either the server has no federation yet, or the two orgs are not peered "+
			"(amqp.url and federation.peers on both orgs, the broker running)", err, o.peerAddr)
	}
	return rep, err
}
