package node

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// Benchmarks of the hot paths; CI runs them briefly only to prove they still run. Figures for
// docs/performance.md come from cmd/parley-bench.

func BenchmarkDecodeRequest(b *testing.B) {
	frame := []byte(`{"op":"send","id":"r42","room_id":"!abc:test.local","txn_id":"t42","content":{"msgtype":"m.text","body":"hello there"}}`)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, _, err := decodeRequest(frame); err != nil {
			b.Fatal(err)
		}
	}
}

func benchEvent(b *testing.B) *event.Event {
	b.Helper()
	e := &event.Event{RoomID: "!abc:test.local", Sender: "@alice:test.local", Origin: "test.local", OriginTS: time.Now().UnixMilli(),
		Type: "m.room.message", Content: json.RawMessage(`{"body":"hello there","msgtype":"m.text"}`),
		PrevEvents: []string{"$prev"}, Depth: 7, StreamPos: 42}
	if err := event.Seal(e); err != nil {
		b.Fatal(err)
	}
	return e
}

func BenchmarkEncodeEventFrame(b *testing.B) {
	e := benchEvent(b)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		stored, _ := e.AppendJSON(nil)
		_ = eventFrame(publicParts(stored, e))
	}
}

// BenchmarkFanout pushes one event to 1,000 sessions whose connections drain into io.Discard:
// the cost of the hub's per-receiver work (queueing and one write per session).
func BenchmarkFanout(b *testing.B) {
	const receivers = 1000
	srv := &Server{opts: Options{SendQueue: 1 << 20}, metrics: newMetrics(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	h := &hub{metrics: srv.metrics, sessions: map[string]map[*session]struct{}{}}
	users := make([]string, receivers)
	var conns []net.Conn
	for i := range users {
		users[i] = "@u" + strconv.Itoa(i) + ":test.local"
		server, client := net.Pipe()
		conns = append(conns, server, client)
		go func() { _, _ = io.Copy(io.Discard, client) }()
		s := &session{srv: srv, raw: server, wlock: make(chan struct{}, 1), user: users[i], log: srv.log, done: make(chan struct{})}
		h.sessions[users[i]] = map[*session]struct{}{s: {}}
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	e := benchEvent(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ev := *e
		ev.StreamPos = int64(i + 1)
		stored, _ := ev.AppendJSON(nil) // as the FSM stores it
		h.deliverEvent(&state.Delivery{Event: &ev, JSON: stored, Recipients: users})
	}
	b.StopTimer()
	for _, set := range h.sessions {
		for s := range set {
			s.writers.Wait()
		}
	}
	b.ReportMetric(float64(b.N*receivers)/b.Elapsed().Seconds(), "deliveries/s")
}
