package node

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func testutilCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// metricValue reads one unlabelled series from a /metrics body.
func metricValue(t *testing.T, body, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("metrics lack %s", name)
	return 0
}

// TestStateSizeMetricsGrowWithHistory: the in-memory state's size is exported, and every stored
// message adds its event with its indexes.
func TestStateSizeMetricsGrowWithHistory(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tok := n.register("")
	c := n.dial(tok)
	room := c.createRoom(map[string]any{})
	_, before := n.get("/metrics")
	keys0, bytes0 := metricValue(t, before, "parley_state_keys"), metricValue(t, before, "parley_state_bytes")
	if keys0 <= 0 || bytes0 <= 0 {
		t.Fatalf("a state with a user and a room: %v keys, %v bytes", keys0, bytes0)
	}
	body := strings.Repeat("x", 1000)
	for i := range 10 {
		c.send(room, fmt.Sprint("t", i), body)
	}
	_, after := n.get("/metrics")
	keys1, bytes1 := metricValue(t, after, "parley_state_keys"), metricValue(t, after, "parley_state_bytes")
	// Each message: the event, its id, its stream position and its txn_id.
	if keys1-keys0 < 40 {
		t.Fatalf("10 messages added %v keys, want at least 40", keys1-keys0)
	}
	if bytes1-bytes0 < 10*1000 {
		t.Fatalf("10 messages of 1000 bytes added %v bytes", bytes1-bytes0)
	}
}
