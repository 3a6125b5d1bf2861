// Command parley-bench is Parley's load tool. It speaks only the client
// protocol (HTTP + WebSocket) to one or more running nodes and measures
// idle connections, fan-out, delivery latency, cluster commit throughput
// and federation lag; its machine scenario measures, without a node, what
// the machine itself charges for the primitives those figures are made of.
// See `parley-bench help`.
package main

import (
	"os"
	"runtime/debug"
)

// gcPercent is the load tool's GOGC unless the environment sets one. Its live heap is small
// (the subscribers' epoll loops hold no per-connection buffers) while every pushed frame
// makes garbage: at Go's default the collector ran 6 times as often in a fanout run (8% of
// the tool's CPU instead of 3%) and the subscribers fell behind the node.
const gcPercent = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
