package consensus

import (
	"bytes"
	"encoding/json"
	"log/slog"
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
// election lines are. hashicorp/raft logs them at warn, so every healthy start of a node
// showed "heartbeat timeout reached, starting election" as a warning.
func TestHealthyStartLogsNoWarnings(t *testing.T) {
	var out bytes.Buffer // read once the cluster is closed
	logger := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c := openSingle(t, t.TempDir(), freeAddr(t), func(o *Options) { o.Logger = logger })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	l := newRaftLogger(logger, "raft")
	l.Warn("rejecting pre-vote request since we have a leader", "from", "n2", "leader", "n1")
	l.Warn("rejecting vote request since we have a leader", "from", "n2", "leader", "n1")
	l.Warn("failed to contact", "server-id", "n2") // trouble stays a warning
	var elections, kept int
	for _, rec := range logLines(t, &out) {
		msg := rec["msg"].(string)
		switch {
		case msg == "failed to contact":
			kept++
			if rec["level"] != "WARN" {
				t.Errorf("%q at %v, want WARN", msg, rec["level"])
			}
		case rec["level"] != "INFO" && rec["level"] != "DEBUG":
			t.Errorf("a healthy start logged %v", rec)
		case strings.Contains(msg, "election") || strings.Contains(msg, "since we have a leader"):
			elections++
		}
	}
	if elections < 3 || kept != 1 {
		t.Fatalf("%d election lines (want the start's and the two refusals), %d warnings kept (want 1):\n%s", elections, kept, out.String())
	}
}
