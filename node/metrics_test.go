package node

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/federation"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func testutilCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	_ = g.Write(&m)
	return m.GetGauge().GetValue()
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

// TestDocsListRealMetrics: docs/operations.md lists every parley_ metric the node exports, so
// it does not go stale when a metric is added or renamed (TestDashboardQueriesRealSeries checks
// the dashboard).
func TestDocsListRealMetrics(t *testing.T) {
	m := newMetrics()
	m.watchState(state.Open())
	ex := readExported(t, m.reg)
	if ex.labels["parley_raft_log_store_seconds"] == nil || !ex.labels["parley_federation_queue_depth"]["peer"] {
		t.Fatalf("the metric names read from the registry are wrong: %v", ex.labels)
	}
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range ex.labels {
		if strings.HasPrefix(name, "parley_") && !strings.Contains(string(ops), "`"+name+"`") {
			t.Errorf("docs/operations.md does not list %s", name)
		}
	}
}

// exportedSeries is what a node's registry exports: each metric's name, its labels and (for the
// metrics with a series) its type.
type exportedSeries struct {
	labels map[string]map[string]bool
	types  map[string]dto.MetricType
}

// readExported reads the names and labels of every metric reg describes, and the types of those
// it gathers.
func readExported(t *testing.T, reg *prometheus.Registry) exportedSeries {
	t.Helper()
	descs := make(chan *prometheus.Desc, 1024)
	go func() { reg.Describe(descs); close(descs) }()
	desc := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	ex := exportedSeries{labels: map[string]map[string]bool{}, types: map[string]dto.MetricType{}}
	for d := range descs {
		sub := desc.FindStringSubmatch(d.String())
		if sub == nil {
			t.Fatalf("cannot read %s", d)
		}
		ls := map[string]bool{}
		for l := range strings.SplitSeq(sub[2], ",") {
			if l != "" {
				ls[l] = true
			}
		}
		ex.labels[sub[1]] = ls
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		ex.types[f.GetName()] = f.GetType()
	}
	return ex
}

// promQLKeywords are the words of a PromQL expression that name no series.
var promQLKeywords = map[string]bool{"sum": true, "min": true, "max": true, "avg": true, "count": true,
	"stddev": true, "stdvar": true, "topk": true, "bottomk": true, "quantile": true, "group": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true}

// promSelector is one series selector of a PromQL expression.
type promSelector struct {
	name     string
	matchers map[string]string // label -> value or regexp
}

// parsePromQL takes apart what the dashboard's expressions use of PromQL: the series selectors,
// the labels of by/without clauses, and the functions called.
func parsePromQL(expr string) (sels []promSelector, grouping []string, funcs map[string]bool) {
	byClause := regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	for _, m := range byClause.FindAllStringSubmatch(expr, -1) {
		for l := range strings.SplitSeq(m[1], ",") {
			grouping = append(grouping, strings.TrimSpace(l))
		}
	}
	expr = byClause.ReplaceAllString(expr, " ")
	expr = regexp.MustCompile(`\[[^\]]*\]`).ReplaceAllString(expr, " ") // range durations
	matcher := regexp.MustCompile(`([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	funcs = map[string]bool{}
	token := regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*|\{[^}]*\}|[0-9.]+|\S`)
	toks := token.FindAllString(expr, -1)
	for i, tok := range toks {
		if !regexp.MustCompile(`^[a-zA-Z_:]`).MatchString(tok) || promQLKeywords[tok] {
			continue
		}
		if i+1 < len(toks) && toks[i+1] == "(" {
			funcs[tok] = true
			continue
		}
		s := promSelector{name: tok, matchers: map[string]string{}}
		if i+1 < len(toks) && strings.HasPrefix(toks[i+1], "{") {
			for _, m := range matcher.FindAllStringSubmatch(toks[i+1], -1) {
				s.matchers[m[1]] = m[2]
			}
		}
		sels = append(sels, s)
	}
	return sels, grouping, funcs
}

// TestDashboardQueriesRealSeries: every query of docs/grafana-dashboard.json names a series a
// running node exports, with labels that series has, so renaming a metric or a label fails here
// rather than leaving an empty panel. Counters and histograms are read with rate or increase, a
// quantile keeps le, and a legend names only labels its query keeps.
func TestDashboardQueriesRealSeries(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	// The labelled metrics have no series, hence no type, until they are used.
	n.srv.ObserveRelay("peer.example", time.Second)
	n.srv.SetRelayBacklog("peer.example", 0)
	n.srv.CountDeadLetter("bridge", "M_FORBIDDEN")
	n.srv.CountReconnect("bridge")
	n.srv.metrics.rateLimited.WithLabelValues("send")
	n.srv.metrics.opErrors.WithLabelValues("M_FORBIDDEN")
	ex := readExported(t, n.srv.metrics.reg)
	for name := range ex.labels {
		if _, ok := ex.types[name]; !ok && strings.HasPrefix(name, "parley_") {
			t.Fatalf("%s has no series: use it above so its type can be checked", name)
		}
	}

	raw, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dashboard struct {
		Panels []struct {
			Title   string
			Targets []struct {
				Expr         string
				LegendFormat string
			}
		}
	}
	if err := json.Unmarshal(raw, &dashboard); err != nil {
		t.Fatalf("docs/grafana-dashboard.json: %v", err)
	}
	aggregation := regexp.MustCompile(`\b(?:sum|min|max|avg|count|stddev|stdvar|topk|bottomk|group)\s*(?:by|without|\()`)
	exprs := 0
	for _, p := range dashboard.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			exprs++
			where := fmt.Sprintf("panel %q: %s", p.Title, target.Expr)
			sels, grouping, funcs := parsePromQL(target.Expr)
			if len(sels) == 0 {
				t.Errorf("%s: no series", where)
			}
			available := map[string]bool{"instance": true, "job": true} // added by the scrape
			for _, s := range sels {
				if strings.HasPrefix(s.name, "rabbitmq_") {
					// RabbitMQ's own exporter: the queue it selects must be the one federation uses.
					if re, ok := s.matchers["queue"]; ok {
						if !regexp.MustCompile("^(?:" + re + ")$").MatchString(federation.InboxQueue("peer.example")) {
							t.Errorf("%s: queue=~%q misses the federation inbox %s", where, re, federation.InboxQueue("peer.example"))
						}
					}
					for l := range s.matchers {
						available[l] = true
					}
					continue
				}
				base, suffix := s.name, ""
				if _, ok := ex.labels[base]; !ok {
					for _, sfx := range []string{"_bucket", "_sum", "_count"} {
						if b, ok := strings.CutSuffix(s.name, sfx); ok {
							base, suffix = b, sfx
						}
					}
				}
				labels, ok := ex.labels[base]
				if !ok {
					t.Errorf("%s: the node exports no %s", where, s.name)
					continue
				}
				typ := ex.types[base]
				if suffix != "" && typ != dto.MetricType_HISTOGRAM && typ != dto.MetricType_SUMMARY {
					t.Errorf("%s: %s is a %v, it has no %s", where, base, typ, suffix)
				}
				if suffix == "_bucket" {
					available["le"] = true
				}
				counting := typ == dto.MetricType_COUNTER || suffix != ""
				if rated := funcs["rate"] || funcs["increase"] || funcs["irate"]; rated != counting {
					t.Errorf("%s: %s is a %v, read with rate or increase: %v", where, s.name, typ, rated)
				}
				for l := range labels {
					available[l] = true
				}
				for l := range s.matchers {
					if !labels[l] && l != "instance" && l != "job" {
						t.Errorf("%s: %s has no label %q", where, s.name, l)
					}
				}
			}
			for _, l := range grouping {
				if !available[l] {
					t.Errorf("%s: groups by %q, which its series lack", where, l)
				}
			}
			kept := available
			if aggregation.MatchString(target.Expr) { // keeps only the labels it groups by
				kept = map[string]bool{}
				for _, l := range grouping {
					kept[l] = true
				}
			}
			if funcs["histogram_quantile"] {
				if !kept["le"] {
					t.Errorf("%s: histogram_quantile needs le kept", where)
				}
				delete(kept, "le")
			}
			for _, m := range regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`).FindAllStringSubmatch(target.LegendFormat, -1) {
				if !kept[m[1]] {
					t.Errorf("%s: the legend %q names %q, which the query does not keep", where, target.LegendFormat, m[1])
				}
			}
		}
	}
	if exprs < 20 {
		t.Fatalf("the dashboard has only %d queries", exprs)
	}
}

// waitMetric polls n's /metrics until the unlabelled series name satisfies ok (bounded).
func waitMetric(t *testing.T, n *testNode, name string, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body := n.get("/metrics")
		if status != http.StatusOK {
			t.Fatalf("%s /metrics: %d", n.addr, status)
		}
		v := metricValue(t, body, name)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s stays at %v", n.addr, name, v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetricsOnEveryNode: the leader and the followers each serve their own /metrics, counting
// what happens on them (the connection, frames and commits of a client of a follower; every
// node's applies and pushes), and the connections gauge comes back down when the client goes.
// None of them serves pprof on the public listener.
func TestMetricsOnEveryNode(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, nil)
	var follower *testNode
	for _, n := range nodes {
		if !n.srv.cluster.IsLeader() {
			follower = n
		}
	}
	_, tok := follower.register("")
	c := follower.dial(tok)
	room := c.createRoom(map[string]any{})
	for i := range 3 {
		c.send(room, fmt.Sprint("t", i), "hello")
	}
	atLeast := func(min float64) func(float64) bool { return func(v float64) bool { return v >= min } }
	for _, n := range nodes {
		// The room's creation events and the 3 messages, applied and pushed on every node.
		waitMetric(t, n, "parley_events_committed_total", atLeast(4))
		waitMetric(t, n, "parley_raft_apply_entries_count", atLeast(1))
		waitMetric(t, n, "parley_raft_log_store_seconds_count", atLeast(1))
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
			if status, body := n.get(path); status != http.StatusNotFound {
				t.Errorf("%s serves %s on the public listener: %d %.80q", n.addr, path, status, body)
			}
		}
	}
	waitMetric(t, follower, "parley_ws_connections", func(v float64) bool { return v == 1 })
	waitMetric(t, follower, "parley_ws_frames_in_total", atLeast(5)) // auth, create, 3 sends
	waitMetric(t, follower, "parley_ws_frames_out_total", atLeast(5))
	waitMetric(t, follower, "parley_raft_commit_seconds_count", atLeast(4))
	c.close()
	waitMetric(t, follower, "parley_ws_connections", func(v float64) bool { return v == 0 })
}

// TestRelayLagTellsLongOutagesApart: after a broker or peer outage the first transaction
// through is as old as the outage, which takes minutes, not seconds; the lag's histogram must
// tell a lag of 40 s from one of 10 minutes rather than put both past its last bucket (the
// dashboard's p99 then flattens at that bucket's bound).
func TestRelayLagTellsLongOutagesApart(t *testing.T) {
	m := newMetrics()
	bound := func(peer string, lag time.Duration) float64 {
		m.relayLag.WithLabelValues(peer).Observe(lag.Seconds())
		var d dto.Metric
		if err := m.relayLag.WithLabelValues(peer).(prometheus.Histogram).Write(&d); err != nil {
			t.Fatal(err)
		}
		for _, b := range d.GetHistogram().GetBucket() {
			if b.GetCumulativeCount() > 0 {
				return b.GetUpperBound()
			}
		}
		return math.Inf(1)
	}
	short, long := bound("a.example", 40*time.Second), bound("b.example", 10*time.Minute)
	if math.IsInf(long, 1) || short == long {
		t.Fatalf("a relay lag of 40 s falls in the bucket up to %vs, one of 10 min in the bucket up to %vs", short, long)
	}
}

// TestMetricLabelsHoldNoIdentifiers: after a client's ordinary traffic, refusals and errors, no
// label of a node's metrics holds a user id, room id, token or address: each would add series
// without bound.
func TestMetricLabelsHoldNoIdentifiers(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.Limits.RoomsPerHour = 1 })
	user, tok := n.register("")
	c := n.dial(tok)
	room := c.createRoom(map[string]any{})
	c.send(room, "t1", "hello")
	c.fails("M_LIMIT_EXCEEDED", map[string]any{"op": "create_room"})
	c.fails("M_NOT_FOUND", map[string]any{"op": "join", "room_id": "!nosuch:test.local"})
	c.fails("M_INVALID_PARAM", map[string]any{"op": "no such op"})
	families, err := n.srv.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := 0
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				values++
				v := l.GetValue()
				if strings.ContainsAny(v, "@!:") || strings.Contains(v, "127.0.0.1") || strings.Contains(v, tok) ||
					strings.Contains(v, user) || strings.Contains(v, room) {
					t.Errorf("%s{%s=%q}: a label holds an identifier", f.GetName(), l.GetName(), v)
				}
			}
		}
	}
	if values < 3 { // the limit, and the codes of the two errors
		t.Fatalf("only %d label values: the traffic above counted nothing", values)
	}
}

// TestRefusedAuthCountsAsAnOpError: error answers written before a session's writer starts (a
// refused auth, a connection limit) count in parley_op_errors_total like any other; they were
// left out, so a flood of bad tokens did not show.
func TestRefusedAuthCountsAsAnOpError(t *testing.T) {
	n := startNode(t, nil)
	before := testutilCounter(n.srv.metrics.opErrors.WithLabelValues("M_UNKNOWN_TOKEN"))
	c := n.dialRaw(nil)
	if reply := c.request(map[string]any{"op": "auth", "token": "made-up"}); reply["code"] != "M_UNKNOWN_TOKEN" {
		t.Fatalf("auth with a made-up token: %v", reply)
	}
	if got := testutilCounter(n.srv.metrics.opErrors.WithLabelValues("M_UNKNOWN_TOKEN")) - before; got != 1 {
		t.Fatalf("parley_op_errors_total{code=\"M_UNKNOWN_TOKEN\"} rose by %v for one refused auth, want 1", got)
	}
}

// sendAndSeePush sends a message and waits for its own push to c: the hub counts an event
// before pushing it, in log order, so every event before it has been counted by then.
func sendAndSeePush(c *client, room, txn string) {
	c.t.Helper()
	id := c.send(room, txn, "hello")
	c.nextPush(func(m map[string]any) bool {
		e, _ := m["event"].(map[string]any)
		return m["op"] == "event" && e["event_id"] == id
	})
}

// TestEventsCommittedSkipsTheReplayAtStart: a restarted node applies the log after its snapshot
// again (its state is rebuilt in memory at every start), but those events were committed before
// it started; parley_events_committed_total counts only the new ones, with or without a
// snapshot in between, so that its rate shows no burst of old events after a restart.
func TestEventsCommittedSkipsTheReplayAtStart(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tok := n.register("")
	c := n.dial(tok)
	room := c.createRoom(map[string]any{})
	for i := range 5 {
		sendAndSeePush(c, room, fmt.Sprint("before", i))
	}
	if v := testutilCounter(n.srv.metrics.eventsCommitted); v < 6 {
		t.Fatalf("a room and 5 messages counted %v events", v)
	}
	for _, snapshot := range []bool{false, true} {
		if snapshot {
			if err := n.srv.cluster.Snapshot(); err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				sendAndSeePush(c, room, fmt.Sprint("after snapshot", i)) // in the log after the snapshot
			}
		}
		n.restart()
		c = n.dial(tok)
		sendAndSeePush(c, room, fmt.Sprint("new", snapshot))
		if v := testutilCounter(n.srv.metrics.eventsCommitted); v != 1 {
			t.Errorf("snapshot %v: after a restart and one new message the node counts %v events committed, want 1", snapshot, v)
		}
	}
}

// TestEventsCommittedOnARestartedFollower: a follower restarted on its data counts the events
// committed while it was down, which reach its log only now, and the new ones, but not those its
// log held already; the batch it applies first holds both kinds.
func TestEventsCommittedOnARestartedFollower(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, nil)
	var leader, follower *testNode
	for _, n := range nodes {
		if n.srv.cluster.IsLeader() {
			leader = n
		} else {
			follower = n
		}
	}
	_, tok := leader.register("")
	c := leader.dial(tok)
	room := c.createRoom(map[string]any{})
	for i := range 3 {
		sendAndSeePush(c, room, fmt.Sprint("before", i))
	}
	// A commit needs one follower of two: the one stopped must hold the entries before first,
	// or after its restart they are new to its log and counted.
	for deadline := time.Now().Add(10 * time.Second); follower.srv.cluster.AppliedIndex() < leader.srv.cluster.AppliedIndex(); {
		if time.Now().After(deadline) {
			t.Fatalf("the follower applied %d, the leader %d", follower.srv.cluster.AppliedIndex(), leader.srv.cluster.AppliedIndex())
		}
		time.Sleep(10 * time.Millisecond)
	}
	follower.stop()
	const missed = 4
	for i := range missed {
		sendAndSeePush(c, room, fmt.Sprint("missed", i))
	}
	follower.start()
	fc := follower.dial(tok)
	id := c.send(room, "new", "hello")
	fc.nextPush(func(m map[string]any) bool {
		e, _ := m["event"].(map[string]any)
		return m["op"] == "event" && e["event_id"] == id
	})
	if v := testutilCounter(follower.srv.metrics.eventsCommitted); v != missed+1 {
		t.Fatalf("a follower restarted after missing %d messages, then one new: %v events committed, want %d", missed, v, missed+1)
	}
}
