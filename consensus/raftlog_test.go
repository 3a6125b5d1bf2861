package consensus

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// logLines are the JSON log records in out.
func logLines(t *testing.T, out *bytes.Buffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		lines = append(lines, rec)
	}
	return lines
}

func TestRaftLoggerWritesThroughSlog(t *testing.T) {
	var out bytes.Buffer
	l := newRaftLogger(slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo})), "raft")
	l.Debug("not shown at info")
	l.Trace("nor this")
	l.Info("entering leader state", "leader", "n1", "servers", hclog.Fmt("%d voters", 3))
	l.With("peer", "n2").Warn("failed to contact", "time", 3)
	l.Named("net").Error("failed to decode incoming command", "error", "closed")
	l.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn}).Print("from a standard logger")
	if !l.IsInfo() || l.IsDebug() || l.GetLevel() != hclog.Info {
		t.Fatalf("levels: info %v debug %v level %v, want the handler's Info", l.IsInfo(), l.IsDebug(), l.GetLevel())
	}
	if got := l.With("a", 1).With("b", 2).ImpliedArgs(); len(got) != 4 {
		t.Fatalf("implied args %v", got)
	}
	want := []map[string]any{
		{"level": "INFO", "msg": "entering leader state", "component": "raft", "leader": "n1", "servers": "3 voters"},
		{"level": "WARN", "msg": "failed to contact", "component": "raft", "peer": "n2", "time": float64(3)},
		{"level": "ERROR", "msg": "failed to decode incoming command", "component": "raft.net", "error": "closed"},
		{"level": "WARN", "msg": "from a standard logger", "component": "raft"},
	}
	if n := strings.Count(out.String(), `"component"`); n != 4 {
		t.Fatalf("%d component attributes in 4 lines: a named logger repeats it\n%s", n, out.String())
	}
	got := logLines(t, &out)
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		for k, v := range w {
			if got[i][k] != v {
				t.Errorf("line %d: %s = %v, want %v (%v)", i, k, got[i][k], v, got[i])
			}
		}
	}
}

// TestRaftLinesReachTheNodesLogger: a starting cluster's Raft lines come out through the
// logger the node was given, not on stderr in hclog's own format.
func TestRaftLinesReachTheNodesLogger(t *testing.T) {
	var out bytes.Buffer // read once the cluster is closed: slog's handler serialises the writes
	logger := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c := openSingle(t, t.TempDir(), freeAddr(t), func(o *Options) { o.Logger = logger })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, rec := range logLines(t, &out) {
		if rec["component"] == "raft" && strings.Contains(rec["msg"].(string), "leader") {
			return
		}
	}
	t.Fatalf("no Raft line about the leadership in the node's log:\n%v", logLines(t, &out))
}

// TestTransportQuietOnceClosing: the transport's warnings and errors stay warnings and errors
// while the node runs, and become debug lines once it is closing, in loggers derived from it
// too; other Raft loggers are not affected.
func TestTransportQuietOnceClosing(t *testing.T) {
	var out bytes.Buffer
	base := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var closing atomic.Bool
	transport := newTransportLogger(base, &closing)
	derived := transport.With("peer", "n2").Named("pipeline")
	other := newRaftLogger(base, "raft")
	transport.Error("before")
	closing.Store(true)
	transport.Error("after")
	derived.Warn("after, derived")
	transport.Info("info after")
	other.Error("other after")
	want := map[string]string{"before": "ERROR", "after": "DEBUG", "after, derived": "DEBUG", "info after": "INFO", "other after": "ERROR"}
	lines := logLines(t, &out)
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d: %v", len(lines), len(want), lines)
	}
	for _, rec := range lines {
		if msg := rec["msg"].(string); rec["level"] != want[msg] {
			t.Errorf("%q at %v, want %s", msg, rec["level"], want[msg])
		}
	}
}

// TestCleanShutdownLogsNoTransportErrors: closing the nodes of a cluster, one after the other,
// logs no warning or error from a closing node's own transport (hashicorp/raft reported the
// connections it was reading from closing under it at error on every shutdown).
func TestCleanShutdownLogsNoTransportErrors(t *testing.T) {
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	peers := []Peer{{"n1", addrs[0]}, {"n2", addrs[1]}, {"n3", addrs[2]}}
	var cs []*Cluster
	var outs []*lockedBuffer
	for i, p := range peers {
		out := &lockedBuffer{}
		c, err := Open(Options{NodeID: p.ID, DataDir: t.TempDir(), RaftBind: addrs[i], Bootstrap: true, Peers: peers,
			Secret: "test cluster secret", HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond,
			Logger: slog.New(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if err != nil {
			t.Fatal(err)
		}
		cs, outs = append(cs, c), append(outs, out)
	}
	closed := make([]bool, len(cs))
	t.Cleanup(func() {
		for i, c := range cs {
			if !closed[i] {
				c.Close()
			}
		}
	})
	leader := waitLeader(t, cs...)
	room := seedRoom(t, leader)
	for i := 0; i < 10; i++ {
		propose(t, leader, message(t, room, i))
	}
	for i, c := range cs {
		before := outs[i].len()
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		closed[i] = true
		time.Sleep(100 * time.Millisecond) // the transport's connection readers end after Close
		for _, line := range strings.Split(strings.TrimSpace(outs[i].from(before)), "\n") {
			if strings.Contains(line, `"component":"raft-net"`) {
				t.Errorf("%s logged while closing: %s", c.NodeID(), line)
			}
		}
	}
}

// lockedBuffer is a log destination read while goroutines may still write to it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

func (l *lockedBuffer) from(off int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()[off:]
}

// TestHealthyStartLogsNoWarnings: a node's first election, and the votes refused because a
// leader is already known, are the normal course of a start and logged at info, as Raft's other
// election lines are (hashicorp/raft logs them at warn, so every healthy start of a node showed
// "heartbeat timeout reached, starting election" as a warning). Losing a leader, and elections
// that find no quorum, stay warnings. The lines come from real nodes, so a raft upgrade that
// rewords them fails here.
func TestHealthyStartLogsNoWarnings(t *testing.T) {
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	peers := []Peer{{"n1", addrs[0]}, {"n2", addrs[1]}, {"n3", addrs[2]}}
	outs := []*lockedBuffer{{}, {}, {}}
	cs := make([]*Cluster, 3)
	closed := make([]bool, 3)
	t.Cleanup(func() {
		for i, c := range cs {
			if c != nil && !closed[i] {
				c.Close()
			}
		}
	})
	// n3 and n2 listen before n1 asks for their votes, and n2 waits longer for a leader than
	// n1: n1 leads, without a split vote (which would rightly be a warning).
	for _, i := range []int{2, 1, 0} {
		p := peers[i]
		opts := Options{NodeID: p.ID, DataDir: t.TempDir(), RaftBind: addrs[i], Bootstrap: true, Peers: peers,
			Secret: "test cluster secret", HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
			Logger: slog.New(slog.NewJSONHandler(outs[i], &slog.HandlerOptions{Level: slog.LevelInfo}))}
		if p.ID == "n2" {
			opts.HeartbeatTimeout, opts.ElectionTimeout = 2*time.Second, 2*time.Second
		}
		if p.ID == "n3" {
			// n3 is joined by the leader (it has no configuration of its own, so it cannot lead)
			// and times out between the leader's heartbeats (50-100 ms apart): it asks for votes
			// again and again, and n1 and n2 refuse them since they have a leader.
			opts.Bootstrap, opts.HeartbeatTimeout, opts.ElectionTimeout = false, 20*time.Millisecond, 20*time.Millisecond
		}
		c, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c
	}
	leader := waitLeader(t, cs[0], cs[1])
	survivor := 1 - slices.Index(cs, leader)
	lines := func(i int) []map[string]any {
		var b bytes.Buffer
		b.WriteString(outs[i].from(0))
		return logLines(t, &b)
	}
	const refusal = "since we have a leader"
	waitLine := func(what string, nodes []int, match func(rec map[string]any) bool) map[string]any {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			for _, i := range nodes {
				for _, rec := range lines(i) {
					if match(rec) {
						return rec
					}
				}
			}
		}
		t.Fatalf("no %s logged", what)
		return nil
	}
	waitLine("vote refused since a leader is known", []int{0, 1}, func(rec map[string]any) bool {
		return strings.Contains(rec["msg"].(string), refusal)
	})
	var starts, refusals int
	for _, i := range []int{0, 1} {
		for _, rec := range lines(i) {
			msg := rec["msg"].(string)
			switch {
			case msg == "appendEntries rejected, sending older logs":
				// The leader finding where n3's log ends: n3 joins with an empty one.
			case rec["level"] != "INFO" && rec["level"] != "DEBUG":
				t.Errorf("%s: a healthy start logged %v", peers[i].ID, rec)
			case msg == "heartbeat timeout reached, starting election":
				starts++
			case strings.Contains(msg, refusal):
				refusals++
			}
		}
	}
	if starts == 0 || refusals == 0 {
		t.Fatalf("%d first elections and %d refused votes logged at info by n1 and n2, want both", starts, refusals)
	}

	// n3 and then the leader stop: the last node lost its leader (a warning, naming it), and its
	// elections find no quorum (a warning each time).
	for _, i := range []int{2, 1 - survivor} {
		if err := cs[i].Close(); err != nil {
			t.Fatal(err)
		}
		closed[i] = true
	}
	lost := waitLine("heartbeat timeout naming the lost leader", []int{survivor}, func(rec map[string]any) bool {
		return rec["msg"] == "heartbeat timeout reached, starting election" && rec["last-leader-id"] == leader.NodeID()
	})
	if lost["level"] != "WARN" {
		t.Errorf("a follower that lost its leader logged %v, want WARN", lost)
	}
	again := waitLine("election restarted without a quorum", []int{survivor}, func(rec map[string]any) bool {
		return rec["msg"] == "Election timeout reached, restarting election"
	})
	if again["level"] != "WARN" {
		t.Errorf("an election without a quorum logged %v, want WARN", again)
	}
}
