package consensus

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

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
