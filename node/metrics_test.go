package node

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/parley-chat/parley/consensus/state"
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

// roomAndMetrics starts a node with a user connected to a new room, and reads its metrics.
func roomAndMetrics(t *testing.T) (n *testNode, c *client, room, metrics string) {
	t.Helper()
	n = startNode(t, nil)
	_, tok := n.register("")
	c = n.dial(tok)
	room = c.createRoom(map[string]any{})
	_, metrics = n.get("/metrics")
	return n, c, room, metrics
}

// TestStateSizeMetricsGrowWithHistory: the in-memory state's size is exported, and every stored
// message adds its event with its indexes.
func TestStateSizeMetricsGrowWithHistory(t *testing.T) {
	t.Parallel()
	n, c, room, before := roomAndMetrics(t)
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

// TestCommitMetricsTakeTheCommitApart: each send's commit is timed whole, in its wait for this
// node's own apply (no wait to speak of on a single node, which answers once it has applied),
// and in the writes to the Raft log, which a one-node cluster makes for every commit.
func TestCommitMetricsTakeTheCommitApart(t *testing.T) {
	t.Parallel()
	n, c, room, before := roomAndMetrics(t)
	for i := range 5 {
		c.send(room, fmt.Sprint("t", i), "hello")
	}
	_, after := n.get("/metrics")
	grew := func(name string) float64 { return metricValue(t, after, name) - metricValue(t, before, name) }
	commits := grew("parley_raft_commit_seconds_count")
	if commits < 5 {
		t.Fatalf("5 sends one at a time: %v commits timed", commits)
	}
	if waits := grew("parley_raft_apply_wait_seconds_count"); waits != commits {
		t.Fatalf("%v commits but %v apply waits timed", commits, waits)
	}
	// The leader has applied a batch when Raft answers: it waits for nothing more.
	if wait, total := grew("parley_raft_apply_wait_seconds_sum"), grew("parley_raft_commit_seconds_sum"); wait < 0 || wait > total/2 {
		t.Fatalf("the leader's apply waits took %vs of its commits' %vs", wait, total)
	}
	if stores := grew("parley_raft_log_store_seconds_count"); stores < 5 {
		t.Fatalf("5 commits, %v writes to the Raft log timed", stores)
	}
	if s := grew("parley_raft_log_store_seconds_sum"); s <= 0 {
		t.Fatalf("writes to the Raft log took %vs in all", s)
	}
}

// TestDashboardAndDocsNameRealMetrics: every series the shipped Grafana dashboard queries is one
// the node exports, and docs/operations.md lists every parley_ metric the node exports, so
// neither goes stale when a metric is added, renamed or dropped.
func TestDashboardAndDocsNameRealMetrics(t *testing.T) {
	m := newMetrics()
	m.watchState(state.Open())
	descs := make(chan *prometheus.Desc, 1024)
	m.reg.Describe(descs)
	close(descs)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	exported := map[string]bool{}
	for d := range descs {
		if sub := fqName.FindStringSubmatch(d.String()); sub != nil {
			exported[sub[1]] = true
		}
	}
	if !exported["parley_raft_log_store_seconds"] || !exported["process_resident_memory_bytes"] {
		t.Fatalf("the metric names read from the registry are wrong: %v", exported)
	}
	dashboard, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	series := regexp.MustCompile(`\b(?:parley|process|go)_[a-z0-9_]+`)
	queried := series.FindAllString(string(dashboard), -1)
	if len(queried) < 20 {
		t.Fatalf("the dashboard queries only %d series", len(queried))
	}
	for _, name := range queried {
		base := name
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && exported[b] {
				base = b
			}
		}
		if !exported[base] {
			t.Errorf("docs/grafana-dashboard.json queries %s, which the node does not export", name)
		}
	}
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range exported {
		if strings.HasPrefix(name, "parley_") && !strings.Contains(string(ops), "`"+name+"`") {
			t.Errorf("docs/operations.md does not list %s", name)
		}
	}
}
