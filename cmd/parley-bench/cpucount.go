package main

import (
	"context"
	"strconv"
	"time"
)

// cpuCount is the CPU the nodes and the load tool used over a send phase: each node's
// process_cpu_seconds_total from its /metrics, and the tool's own rusage. Per committed event
// it is what a run costs whatever the host's speed of the moment (which moves the rate), and,
// where the tool shares the nodes' cores, cores / (nodes + tool) per event bounds the rate.
type cpuCount struct {
	urls       []string // the nodes' /metrics
	nodeBefore []float64
	nodeAfter  []float64
	toolBefore time.Duration
	toolAfter  time.Duration
	err        error // the first failed read: no figures then
	toolOK     bool
}

// start reads the counters before the send phase.
func (c *cpuCount) start(ctx context.Context, e *env) {
	c.nodeBefore = c.read(ctx, e)
	c.toolBefore, c.toolOK = ownCPU()
}

// stop reads them after it.
func (c *cpuCount) stop(ctx context.Context, e *env) {
	var ok bool
	c.toolAfter, ok = ownCPU()
	c.toolOK = c.toolOK && ok
	c.nodeAfter = c.read(ctx, e)
}

func (c *cpuCount) read(ctx context.Context, e *env) []float64 {
	out := make([]float64, len(c.urls))
	for i, u := range c.urls {
		if c.err != nil {
			return nil
		}
		out[i], c.err = e.metric(ctx, u, "process_cpu_seconds_total")
	}
	return out
}

// report adds the CPU per committed event, overall and per node, or a note why not.
func (c *cpuCount) report(rep *Report, nodeNames []string, committed int64) {
	if committed <= 0 {
		return
	}
	per := func(seconds float64) float64 { return seconds * 1e6 / float64(committed) }
	if c.err != nil || c.nodeAfter == nil {
		rep.addNote("node CPU per event not measured: reading process_cpu_seconds_total failed: %s", errKey(c.err))
	} else {
		var all float64
		for i := range c.urls {
			d := c.nodeAfter[i] - c.nodeBefore[i]
			all += d
			rep.metric("node"+strconv.Itoa(i)+"_cpu_us_per_event", "node "+nodeNames[i]+": CPU per committed event", per(d), "µs")
		}
		rep.metric("node_cpu_us_per_event", "nodes' CPU per committed event (all nodes, send phase)", per(all), "µs")
	}
	if c.toolOK {
		rep.metric("tool_cpu_us_per_event", "load tool's CPU per committed event (send phase)", per((c.toolAfter - c.toolBefore).Seconds()), "µs")
	}
	rep.addNote("CPU per committed event: the growth of each node's process_cpu_seconds_total (in steps of 10 ms) and of the load tool's own CPU time over the send phase, divided by the events committed; with the tool on the nodes' machine, its cores divided by the two together bound the rate")
}
