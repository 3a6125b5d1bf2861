package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/client"
)

// runCluster: --senders senders spread round-robin over the nodes of one
// org (--addrs), each keeping --window sends in flight (default 1: the next
// send waits for the ok of the one before).
// Headline: committed events/s. Then one watcher connection per node
// checks that every acked event_id was pushed exactly once on that node.
func runCluster(ctx context.Context, e *env) (*Report, error) {
	o := e.opt
	addrs := o.clusterAddrs()
	ts := make([]client.Target, len(addrs))
	for i, a := range addrs {
		ts[i] = e.target(a)
	}
	health := e.clusterHealth(ctx, ts)
	metrics := make([]string, len(ts))
	for i, t := range ts {
		base, _, err := t.URLs()
		if err != nil {
			return nil, err
		}
		metrics[i] = base + "/metrics"
	}
	cpu := &cpuCount{urls: metrics}
	spec := roomSpec{
		label: "cluster", rooms: o.rooms, pubTargets: ts, subTargets: ts,
		pubs: o.senders, subs: len(ts), connsPerUser: len(ts), pubRole: "c", subRole: "w",
		pubNoun: "senders", subNoun: "watchers (one per node)",
		window: o.window, maxMsgs: o.maxMsgs, trackIDs: true,
		duration: o.duration, grace: o.grace, warmup: o.warmup, joinTimeout: o.joinTimeout, bodySize: o.bodySize,
		cpu: cpu,
	}
	return runRoomScenario(ctx, e, spec, addrs, func(rep *Report, rb *roomBench, r roomResult) {
		rep.param("nodes", len(ts))
		for i, h := range health {
			rep.param("node "+addrs[i], h)
		}
		rep.metric("send_ok_per_s", "committed events/s (ok / send phase)", r.okPerSecond, "/s")
		rep.metric("send_ok", "sends ok (committed)", float64(r.ok), "")
		cpu.report(rep, addrs, r.ok)
		var totalMissing, totalDup int64
		for i, s := range rb.subs {
			v := rb.verifyWatcher(s)
			totalMissing += v.missing
			totalDup += v.dups
			n := strconv.Itoa(i)
			rep.metric("node"+n+"_ok", fmt.Sprintf("node %s: sends ok via this node", addrs[i]), float64(rb.okCount[i].Load()), "")
			rep.metric("node"+n+"_missing", fmt.Sprintf("node %s: acked events not pushed", addrs[i]), float64(v.missing), "")
			rep.metric("node"+n+"_dup", fmt.Sprintf("node %s: acked events pushed more than once", addrs[i]), float64(v.dups), "")
			rep.metric("node"+n+"_unacked", fmt.Sprintf("node %s: pushed events never acked", addrs[i]), float64(v.unacked), "")
			if s.conn == nil {
				rep.fail("node %s: the watcher could not connect, nothing verified there", addrs[i])
			} else if v.missing > 0 || v.dups > 0 {
				rep.fail("node %s: %d acked events were not pushed, %d were pushed more than once", addrs[i], v.missing, v.dups)
			}
		}
		rep.metric("verify_missing", "acked events missing (all nodes)", float64(totalMissing), "")
		rep.metric("verify_dups", "acked events duplicated (all nodes)", float64(totalDup), "")
		for i, h := range rb.okByTarget {
			if len(ts) > 1 {
				rep.latency("send_ok_node"+strconv.Itoa(i), "send→ok via "+addrs[i], h)
			}
		}
	})
}

type watcherCheck struct{ missing, dups, unacked int64 }

// verifyWatcher compares the event ids a watcher saw with the acked ones: every acked event
// pushed exactly once, and no event pushed that was never acked (a second event for one send).
func (rb *roomBench) verifyWatcher(s *subscriber) watcherCheck {
	var v watcherCheck
	if s.conn == nil || s.firstID == nil {
		return v
	}
	s.idsMu.Lock()
	defer s.idsMu.Unlock()
	n := min(rb.issued.Load(), rb.capacity)
	isAcked := func(seq int64) bool { return rb.acked[seq>>6].Load()&(1<<uint(seq&63)) != 0 }
	for seq := int64(0); seq < n; seq++ {
		first := s.firstID[seq]
		if !isAcked(seq) {
			if first != "" {
				v.unacked++
			}
			continue
		}
		id := rb.ackedIDs[seq]
		c := s.moreIDs[id]
		if first == id {
			c++
		} else if first != "" {
			v.unacked++ // the message's first push was another event than the acked one
		}
		switch {
		case c == 0:
			v.missing++
		case c > 1:
			v.dups += int64(c - 1)
		}
	}
	if len(s.moreIDs) > 0 {
		// Other pushes of ids that are neither acked nor a message's first push: events
		// for sends beyond the issued ones, or second events for one send.
		known := make(map[string]bool, n)
		for seq := int64(0); seq < n; seq++ {
			if isAcked(seq) {
				known[rb.ackedIDs[seq]] = true
			}
			if id := s.firstID[seq]; id != "" {
				known[id] = true
			}
		}
		for id := range s.moreIDs {
			if !known[id] {
				v.unacked++
			}
		}
	}
	return v
}

// clusterHealth reads /v1/health of each node, for the report.
func (e *env) clusterHealth(ctx context.Context, ts []client.Target) []string {
	out := make([]string, len(ts))
	forEach(ctx, len(ts), len(ts), func(i int) {
		api, err := e.api(ts[i])
		if err != nil {
			out[i] = err.Error()
			return
		}
		hctx, cancel := context.WithTimeout(ctx, e.opt.timeout)
		defer cancel()
		h, err := api.Health(hctx)
		if err != nil {
			out[i] = "health: " + errKey(err)
			return
		}
		out[i] = fmt.Sprintf("org %s, node %s, %s (leader %s)", h.Org, h.NodeID, h.Role, h.Leader)
	})
	return out
}
