// Command parley-bench is Parley's load tool. It speaks only the client
// protocol (HTTP + WebSocket) to one or more running nodes and measures
// idle connections, fan-out, delivery latency, cluster commit throughput
// and federation lag. See `parley-bench help`.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
