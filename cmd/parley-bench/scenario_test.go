package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// A --procs run re-executes its own binary; under `go test` that is the
	// test binary, which then behaves as parley-bench.
	if os.Getenv(childEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	code := m.Run()
	if parleyBinary.path != "" {
		_ = os.RemoveAll(filepath.Dir(parleyBinary.path))
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left running after the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

type benchRun struct {
	code           int
	stdout, stderr string
	rep            *Report
}

// runBench runs the tool in-process with a JSON report in a temp dir.
func runBench(t *testing.T, args ...string) benchRun {
	t.Helper()
	return runBenchTee(t, nil, args...)
}

// runBenchTee is runBench whose stderr also goes to tee (when not nil) as it is written.
func runBenchTee(t *testing.T, tee io.Writer, args ...string) benchRun {
	t.Helper()
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "r.json")
	htmlPath := filepath.Join(dir, "r.html")
	args = append(args, "--json", jsonPath, "--html", htmlPath, "--user-prefix", benchUserPrefix(t))
	var out, errb bytes.Buffer
	var stderr io.Writer = &errb
	if tee != nil {
		stderr = io.MultiWriter(&errb, tee)
	}
	code := run(args, strings.NewReader(""), &out, stderr)
	r := benchRun{code: code, stdout: out.String(), stderr: errb.String()}
	t.Logf("parley-bench %s → exit %d\n%s", strings.Join(args, " "), code, r.stdout)
	if b, err := os.ReadFile(jsonPath); err == nil {
		r.rep = &Report{}
		if err := json.Unmarshal(b, r.rep); err != nil {
			t.Fatalf("report JSON: %v\n%s", err, b)
		}
		h, err := os.ReadFile(htmlPath)
		if err != nil || !bytes.Contains(h, []byte("<svg")) {
			t.Fatalf("HTML report missing or without a chart: %v", err)
		}
	}
	return r
}

// benchUserPrefix is the user-name prefix runBench gives the tool: users are <prefix>-<role><i>.
func benchUserPrefix(t *testing.T) string {
	return "t" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
}

func (r benchRun) metric(t *testing.T, key string) float64 {
	t.Helper()
	if r.rep == nil {
		t.Fatalf("no report; exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	m, ok := r.rep.Metric(key)
	if !ok {
		t.Fatalf("no metric %q in %+v", key, r.rep.Results)
	}
	return m.Value
}

func (r benchRun) dump() string {
	return "exit " + string(rune('0'+r.code)) + "\nstdout:\n" + r.stdout + "\nstderr:\n" + r.stderr
}

// waitAllClosed waits for the node's handlers to notice every close (the
// tool has closed its side when it returns; the node may lag a moment).
func waitAllClosed(t *testing.T, n *fakeNode) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for n.open.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open on the node", n.open.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConnsScenario(t *testing.T) {
	w := newFakeWorld()
	n := w.node(t, "a.test", "n1")
	r := runBench(t, "conns", "--addr", n.addr(), "--conns", "120", "--conns-per-user", "25",
		"--hold", "200ms", "--settle", "0s", "--duration", "20s")
	if r.code != 0 {
		t.Fatal(r.dump())
	}
	if got := r.metric(t, "connected"); got != 120 {
		t.Fatalf("connected %v\n%s", got, r.dump())
	}
	if got := r.metric(t, "failed"); got != 0 {
		t.Fatalf("failed %v", got)
	}
	if got := r.metric(t, "bytes_per_conn"); got != 10_000 {
		t.Fatalf("bytes per conn %v (the fake node grows 10000 B per connection)", got)
	}
	if r.metric(t, "connect_per_s") <= 0 {
		t.Fatal("no connect rate")
	}
	if !strings.Contains(r.stdout, "connections opened") || !strings.Contains(r.stdout, "connect (TCP+upgrade+auth)") {
		t.Fatalf("table:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "conns connect") || !strings.Contains(r.stderr, "[") {
		t.Fatalf("no progress line on stderr:\n%s", r.stderr)
	}
	w.mu.Lock()
	users := len(w.passwords)
	w.mu.Unlock()
	if users != 5 {
		t.Fatalf("%d users registered, want 120/25 → 5", users)
	}
	waitAllClosed(t, n)
	// Same prefix again: users exist, the tool logs in instead.
	r2 := runBench(t, "conns", "--addr", n.addr(), "--conns", "10", "--conns-per-user", "25", "--hold", "0s", "--settle", "0s")
	if r2.code != 0 || r2.metric(t, "connected") != 10 {
		t.Fatal(r2.dump())
	}
}

func TestConnsScenarioProcs(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	w := newFakeWorld()
	n := w.node(t, "a.test", "n1")
	r := runBench(t, "conns", "--addr", n.addr(), "--conns", "90", "--conns-per-user", "20", "--procs", "3",
		"--hold", "300ms", "--settle", "0s", "--duration", "20s")
	if r.code != 0 {
		t.Fatal(r.dump())
	}
	if got := r.metric(t, "connected"); got != 90 {
		t.Fatalf("connected %v\n%s", got, r.dump())
	}
	if got := r.metric(t, "bytes_per_conn"); got != 10_000 {
		t.Fatalf("bytes per conn %v", got)
	}
	if c := r.rep.Latencies[0].MS.Count; c != 90 {
		t.Fatalf("connect samples %d, want 90 (merged from the children)", c)
	}
	waitAllClosed(t, n)
}

func TestConnsScenarioRefused(t *testing.T) {
	w := newFakeWorld()
	n := w.node(t, "a.test", "n1")
	addr := n.addr()
	n.srv.Close()
	r := runBench(t, "conns", "--addr", addr, "--conns", "5", "--setup-timeout", "5s", "--timeout", "1s")
	if r.code != exitFailure || !strings.Contains(r.stderr, "could not be registered") {
		t.Fatal(r.dump())
	}
}

func TestFanoutScenario(t *testing.T) {
	w := newFakeWorld()
	n := w.node(t, "a.test", "n1")
	r := runBench(t, "fanout", "--addr", n.addr(), "--subs", "30", "--pubs", "2", "--window", "2",
		"--max-msgs", "200", "--conns-per-user", "10", "--duration", "20s")
	if r.code != 0 {
		t.Fatal(r.dump())
	}
	if got := r.metric(t, "send_ok"); got != 200 {
		t.Fatalf("send ok %v", got)
	}
	if got := r.metric(t, "deliveries"); got != 6000 {
		t.Fatalf("deliveries %v, want 200 × 30", got)
	}
	if r.metric(t, "lost") != 0 || r.metric(t, "duplicates") != 0 || r.metric(t, "subs_ready") != 30 {
		t.Fatal(r.dump())
	}
	if r.metric(t, "deliveries_per_s") <= 0 || r.rep.Results[0].Key != "deliveries_per_s" {
		t.Fatalf("headline: %+v", r.rep.Results[0])
	}
	if !strings.Contains(r.stdout, "PARLEY_LIMITS_SEND_PER_SECOND") {
		t.Fatalf("no rate-limit advice:\n%s", r.stdout)
	}
}

func TestFanoutDetectsLossAndDuplicates(t *testing.T) {
	w := newFakeWorld()
	w.dropEvery = 97
	w.dupEvery = 89
	n := w.node(t, "a.test", "n1")
	r := runBench(t, "fanout", "--addr", n.addr(), "--subs", "10", "--pubs", "1",
		"--max-msgs", "100", "--grace", "300ms", "--warmup", "3s")
	if r.code != exitFailure {
		t.Fatalf("want exit 1 for lost/duplicate events\n%s", r.dump())
	}
	if r.metric(t, "lost") == 0 || r.metric(t, "duplicates") == 0 || len(r.rep.Failures) < 2 {
		t.Fatal(r.dump())
	}
	if !strings.Contains(r.stdout, "FAILED CHECKS") {
		t.Fatal(r.stdout)
	}
}

func TestLatencyScenarioWithRateLimit(t *testing.T) {
	w := newFakeWorld()
	w.limitEvery = 7
	n := w.node(t, "a.test", "n1")
	r := runBench(t, "latency", "--addr", n.addr(), "--subs", "10", "--pubs", "2", "--rate", "200/s",
		"--duration", "1s", "--grace", "1s")
	if r.code != 0 {
		t.Fatal(r.dump())
	}
	sent := r.metric(t, "send_attempted")
	if sent < 100 || sent > 202 {
		t.Fatalf("attempted %v sends at 200/s for 1s", sent)
	}
	limited := r.metric(t, "send_limited")
	if limited == 0 {
		t.Fatal("the fake refuses every 7th send; none counted")
	}
	ok := r.metric(t, "send_ok")
	if ok+limited != sent {
		t.Fatalf("ok %v + limited %v != attempted %v", ok, limited, sent)
	}
	if got := r.metric(t, "deliveries"); got != ok*10 {
		t.Fatalf("deliveries %v want %v", got, ok*10)
	}
	var push *Latency
	for i := range r.rep.Latencies {
		if r.rep.Latencies[i].Key == "send_push" {
			push = &r.rep.Latencies[i]
		}
	}
	if push == nil || push.MS.Count != int64(ok*10) || push.MS.P50 <= 0 || push.MS.P99 < push.MS.P50 || len(push.Bins) == 0 {
		t.Fatalf("send→push latency: %+v", push)
	}
	if !strings.Contains(r.stdout, "refused with M_LIMIT_EXCEEDED") || !strings.Contains(r.stdout, "PARLEY_LIMITS_SEND_BURST") {
		t.Fatalf("no rate-limit report:\n%s", r.stdout)
	}
}

func TestLatencySkipsBeyondMaxInflight(t *testing.T) {
	w := newFakeWorld()
	w.sendDelay = 20 * time.Millisecond
	n := w.node(t, "a.test", "n1")
	r := runBench(t, "latency", "--addr", n.addr(), "--subs", "3", "--pubs", "1", "--rate", "400/s",
		"--duration", "500ms", "--max-inflight", "2")
	if r.code != 0 {
		t.Fatal(r.dump())
	}
	skipped, ok := r.metric(t, "send_skipped"), r.metric(t, "send_ok")
	if skipped == 0 || ok == 0 || r.metric(t, "lost") != 0 || r.metric(t, "deliveries") != 3*ok {
		t.Fatalf("skipped %v ok %v\n%s", skipped, ok, r.dump())
	}
	if r.rep.Errors["send skipped: max-inflight reached"] != int64(skipped) {
		t.Fatalf("errors %v", r.rep.Errors)
	}
}

func TestClusterScenario(t *testing.T) {
	w := newFakeWorld()
	a := w.node(t, "c.test", "n1")
	b := w.node(t, "c.test", "n2")
	r := runBench(t, "cluster", "--addrs", a.addr()+","+b.addr(), "--senders", "6", "--max-msgs", "300", "--duration", "20s")
	if r.code != 0 {
		t.Fatal(r.dump())
	}
	if r.metric(t, "send_ok") != 300 || r.metric(t, "send_ok_per_s") <= 0 {
		t.Fatal(r.dump())
	}
	if r.metric(t, "node0_missing") != 0 || r.metric(t, "node1_missing") != 0 || r.metric(t, "verify_dups") != 0 {
		t.Fatal(r.dump())
	}
	if r.metric(t, "node0_ok")+r.metric(t, "node1_ok") != 300 || r.metric(t, "node0_ok") == 0 {
		t.Fatal("sends not spread over the nodes")
	}
	if len(r.rep.Latencies) != 4 { // send→ok, send→push, and send→ok per node
		t.Fatalf("latencies: %d", len(r.rep.Latencies))
	}
	// The fake nodes count a millisecond of CPU per push: the send phase's share of all their
	// pushes (the warm-up's are the rest) per committed event.
	w.mu.Lock()
	all := float64(a.pushes+b.pushes) * 1000 / 300
	w.mu.Unlock()
	if cpu := r.metric(t, "node_cpu_us_per_event"); cpu < 0.9*all || cpu > all {
		t.Fatalf("node CPU per event %v µs, want at most %v and not much less\n%s", cpu, all, r.dump())
	}
	if r.metric(t, "node0_cpu_us_per_event")+r.metric(t, "node1_cpu_us_per_event") != r.metric(t, "node_cpu_us_per_event") {
		t.Fatal("per-node CPU does not add up")
	}
	if r.metric(t, "tool_cpu_us_per_event") <= 0 {
		t.Fatal(r.dump())
	}
}

// TestClusterWithoutCPUMetric: a node whose /metrics has no process_cpu_seconds_total still
// gets its run measured, with a note instead of the CPU figures.
func TestClusterWithoutCPUMetric(t *testing.T) {
	w := newFakeWorld()
	w.noCPUMetric = true
	a := w.node(t, "c.test", "n1")
	r := runBench(t, "cluster", "--addrs", a.addr(), "--senders", "2", "--max-msgs", "40")
	if r.code != 0 || r.metric(t, "send_ok") != 40 {
		t.Fatal(r.dump())
	}
	for _, res := range r.rep.Results {
		if res.Key == "node_cpu_us_per_event" {
			t.Fatalf("node CPU reported without the metric: %v", res.Value)
		}
	}
	if !strings.Contains(strings.Join(r.rep.Notes, "\n"), "node CPU per event not measured") {
		t.Fatalf("notes: %q", r.rep.Notes)
	}
}

// TestClusterSendersAreMembersOfTheirRoomsOnly: a sender is a member only of the rooms it
// sends to or had to create, so the node pushes it no other room's events (until 2026-12-06
// sender 0 created every room and stayed in all of them: a fourth watcher).
func TestClusterSendersAreMembersOfTheirRoomsOnly(t *testing.T) {
	for _, tc := range []struct {
		senders, rooms int
		want           []int // rooms each sender is a member of
	}{
		{senders: 6, rooms: 3, want: []int{1, 1, 1, 1, 1, 1}},
		{senders: 2, rooms: 5, want: []int{3, 2}}, // sender 0 makes rooms 0, 2 and 4; sender 1 rooms 1 and 3
	} {
		w := newFakeWorld()
		a := w.node(t, "c.test", "n1")
		prefix := benchUserPrefix(t)
		r := runBench(t, "cluster", "--addrs", a.addr(), "--senders", strconv.Itoa(tc.senders), "--rooms", strconv.Itoa(tc.rooms),
			"--max-msgs", "60", "--duration", "20s")
		if r.code != 0 {
			t.Fatal(r.dump())
		}
		w.mu.Lock()
		for sender, want := range tc.want {
			user := "@" + prefix + "-c" + strconv.Itoa(sender) + ":c.test"
			in := 0
			for _, members := range w.rooms {
				if members[user] {
					in++
				}
			}
			if in != want {
				t.Errorf("%d senders, %d rooms: sender %d is a member of %d rooms, want %d", tc.senders, tc.rooms, sender, in, want)
			}
		}
		w.mu.Unlock()
	}
}

// TestClusterDetectsMissing: events pushed to no one fail the run. Until 2026-12-07 the
// fake node dropped every 50th push, which could fall on the senders alone (map order), and
// CI once saw a run with nothing missing.
func TestClusterDetectsMissing(t *testing.T) {
	w := newFakeWorld()
	w.dropEventEvery = 50
	a := w.node(t, "c.test", "n1")
	r := runBench(t, "cluster", "--addrs", a.addr(), "--senders", "2", "--max-msgs", "200", "--grace", "200ms")
	if r.code != exitFailure || r.metric(t, "verify_missing") == 0 {
		t.Fatal(r.dump())
	}
}

// TestClusterDetectsRepeats: an acked event pushed twice, and a second event for
// one send (committed twice, acked once), each fail the run and are counted on every node.
func TestClusterDetectsRepeats(t *testing.T) {
	for _, tc := range []struct {
		name            string
		dupEvery, forks int
		metric          string
	}{
		{name: "dups", dupEvery: 7, metric: "_dup"}, // often: which connection gets a repeat is random
		{name: "forks", forks: 29, metric: "_unacked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newFakeWorld()
			w.dupEvery, w.forkEvery = tc.dupEvery, tc.forks
			a := w.node(t, "c.test", "n1")
			b := w.node(t, "c.test", "n2")
			r := runBench(t, "cluster", "--addrs", a.addr()+","+b.addr(), "--senders", "4", "--max-msgs", "200", "--grace", "300ms")
			if r.code != exitFailure {
				t.Fatalf("want exit 1\n%s", r.dump())
			}
			for _, node := range []string{"node0", "node1"} {
				if r.metric(t, node+tc.metric) == 0 || r.metric(t, node+"_missing") != 0 {
					t.Fatalf("%s%s = %v, missing %v\n%s", node, tc.metric, r.metric(t, node+tc.metric), r.metric(t, node+"_missing"), r.dump())
				}
			}
		})
	}
}

func TestFederationScenario(t *testing.T) {
	w := newFakeWorld()
	w.federated = true
	a := w.node(t, "a.test", "a1")
	b := w.node(t, "b.test", "b1")
	r := runBench(t, "federation", "--addr", a.addr(), "--peer-addr", b.addr(), "--rate", "100/s", "--duration", "500ms", "--subs", "3")
	if r.code != 0 {
		t.Fatal(r.dump())
	}
	if r.metric(t, "lost") != 0 || r.metric(t, "deliveries") != 3*r.metric(t, "send_ok") || r.metric(t, "fed_p50_ms") <= 0 {
		t.Fatal(r.dump())
	}
	if !strings.Contains(r.stdout, "A send → B push p99") {
		t.Fatal(r.stdout)
	}
}

func TestFederationUnavailable(t *testing.T) {
	w := newFakeWorld()
	a := w.node(t, "a.test", "a1")
	b := w.node(t, "b.test", "b1")
	r := runBench(t, "federation", "--addr", a.addr(), "--peer-addr", b.addr())
	if r.code != exitFailure || !strings.Contains(r.stderr, "federation unavailable") || !strings.Contains(r.stderr, "M_UNAVAILABLE") {
		t.Fatal(r.dump())
	}
	// Same org on both sides is refused too.
	r = runBench(t, "federation", "--addr", a.addr(), "--peer-addr", a.addr())
	if r.code != exitFailure || !strings.Contains(r.stderr, "needs two orgs") {
		t.Fatal(r.dump())
	}
}

func TestScenarioFlagForm(t *testing.T) {
	w := newFakeWorld()
	n := w.node(t, "a.test", "n1")
	var out, errb bytes.Buffer
	code := run([]string{"--addr", n.addr(), "--scenario", "fanout", "--subs", "2", "--max-msgs", "10", "--quiet", "--json", "-"},
		strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out.String(), errb.String())
	}
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("--json - must put only JSON on stdout: %v\n%s", err, out.String())
	}
	if rep.Scenario != "fanout" || !strings.Contains(errb.String(), "RESULT") {
		t.Fatalf("scenario %q; table on stderr:\n%s", rep.Scenario, errb.String())
	}
	if strings.Contains(errb.String(), "fanout run") {
		t.Fatal("--quiet still drew progress")
	}
}

// TestMachineScenario: the probes run without a node, each reports a cost that is positive
// and within what any machine charges, and a --dir that is not a directory is refused.
func TestMachineScenario(t *testing.T) {
	r := runBench(t, "machine", "--dir", t.TempDir())
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for key, max := range map[string]float64{
		"syscall_us":           1_000,
		"page_fault_us":        10_000,
		"thread_round_trip_us": 100_000,
		"fsync_p50_us":         5_000_000,
	} {
		if v := r.metric(t, key); v <= 0 || v > max {
			t.Errorf("%s = %v µs, want in (0, %v]", key, v, max)
		}
	}
	if p50, p99 := r.metric(t, "fsync_p50_us"), r.metric(t, "fsync_p99_us"); p99 < p50 {
		t.Errorf("fsync p99 %v below p50 %v", p99, p50)
	}
	if bad := runBench(t, "machine", "--dir", filepath.Join(t.TempDir(), "missing")); bad.code != exitUsage || !strings.Contains(bad.stderr, "--dir") {
		t.Errorf("a missing --dir: exit %d, stderr %q", bad.code, bad.stderr)
	}
}
