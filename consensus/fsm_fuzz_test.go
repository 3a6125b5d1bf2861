package consensus

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/kv"
	"github.com/parley-chat/parley/consensus/state"
)

// Fuzz targets for what a node decodes from the other nodes of its cluster: log entries (the
// leader appends a follower's forwarded batch as it is), snapshots (installed from the leader),
// the leader's answers to forwarded calls, and the opening of every cluster connection. Their
// seeds are what this package and consensus/state write.

// fuzzChain builds sealed events of one room, at fixed times, so that seeds never change.
type fuzzChain struct {
	t     testing.TB
	room  string
	last  string
	depth int64
}

func (c *fuzzChain) next(sender, typ string, stateKey *string, content any) *event.Event {
	c.t.Helper()
	raw, err := event.CanonicalValue(content)
	if err != nil {
		c.t.Fatal(err)
	}
	c.depth++
	e := &event.Event{RoomID: c.room, Sender: sender, Origin: "t.test", OriginTS: 1700000000000 + c.depth, Type: typ,
		StateKey: stateKey, Content: raw, PrevEvents: []string{}, Depth: c.depth}
	if c.last != "" {
		e.PrevEvents = []string{c.last}
	}
	if err := event.Seal(e); err != nil {
		c.t.Fatal(err)
	}
	c.last = e.EventID
	return e
}

func strp(s string) *string { return &s }

// fuzzEntries are log entries as a node proposes them: alice registers and creates a room, bob
// registers and joins, they talk; then what the FSM must survive too.
func fuzzEntries(tb testing.TB) [][]byte {
	tb.Helper()
	const alice, bob = "@alice:t.test", "@bob:t.test"
	c := &fuzzChain{t: tb, room: "!r1:t.test"}
	msg := func(sender, body, txn string) *state.Command {
		return &state.Command{Kind: state.KindEvent, Event: &state.EventCommand{TxnID: txn,
			Event: c.next(sender, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": body})}}
	}
	batches := [][]*state.Command{
		{{Kind: state.KindRegister, Register: &state.Register{UserID: alice, PasswordHash: []byte("x"), TokenHash: "tok-alice"}}},
		{{Kind: state.KindCreateRoom, CreateRoom: &state.CreateRoom{RoomID: c.room, Events: []*event.Event{
			c.next(alice, "m.room.create", strp(""), state.CreateContent{Creator: alice, Visibility: "public", Federate: true}),
			c.next(alice, "m.room.member", strp(alice), map[string]string{"membership": "join"}),
		}}}},
		{{Kind: state.KindRegister, Register: &state.Register{UserID: bob, PasswordHash: []byte("y"), TokenHash: "tok-bob"}},
			{Kind: state.KindEvent, Event: &state.EventCommand{Event: c.next(bob, "m.room.member", strp(bob), map[string]string{"membership": "join"})}}},
		{msg(alice, "hello", "t1"), msg(bob, "hi <alice>", "t2"), msg(alice, "bye", "t3")},
	}
	var out [][]byte
	for _, cmds := range batches {
		b, err := state.EncodeBatch(cmds)
		if err != nil {
			tb.Fatal(err)
		}
		j, err := json.Marshal(state.Batch{Commands: cmds}) // the log's older format
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b, j)
	}
	return out
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// fuzzFSM is an FSM over a store holding the first entries of fuzzEntries (both forms: the
// JSON ones are repeats, refused or answered idempotently).
func fuzzFSM(tb testing.TB, entries [][]byte, n int) *fsm {
	tb.Helper()
	f := &fsm{store: state.Open(), log: discardLogger(), applied: newIndexWaiter(0)}
	for i, data := range entries[:n] {
		f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data})
	}
	return f
}

func storeSnapshot(tb testing.TB, s *state.Store) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := s.Snapshot(&buf); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzFSMApply hands the FSM a log entry as the leader appends a follower's forwarded batch:
// as it came. Whatever it holds, the FSM answers every log entry of the batch (an undecodable
// one with no results, a decodable one with a result per command) and never panics (it does
// when applying fails, which would stop every node at that entry, at every restart too); and
// the entries after it apply.
func FuzzFSMApply(f *testing.F) {
	entries := fuzzEntries(f)
	for _, e := range entries {
		f.Add(e)
	}
	f.Add([]byte(`{"c":[{"k":"create_room","create_room":{"room_id":"!x:t.test","events":[null]}}]}`))
	f.Add([]byte(`{"c":[{"k":"register","register":{}}]}`))
	f.Add([]byte{0x01, 0x02})
	base := storeSnapshot(f, fuzzFSM(f, entries, 4).store)
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := &fsm{store: state.Open(), log: discardLogger(), applied: newIndexWaiter(0)}
		if err := fsm.store.Restore(bytes.NewReader(base)); err != nil {
			t.Fatal(err)
		}
		index := fsm.store.AppliedIndex() + 1
		want := -1 // undecodable: no results
		if b, err := state.DecodeBatch(data); err == nil {
			want = len(b.Commands)
		}
		after := entries[len(entries)-2] // alice's and bob's messages: new sends, or repeats
		out := fsm.ApplyBatch([]*raft.Log{
			{Index: index, Type: raft.LogCommand, Data: data},
			{Index: index + 1, Type: raft.LogNoop},
			{Index: index + 2, Type: raft.LogCommand, Data: after},
		})
		if len(out) != 3 {
			t.Fatalf("%d answers for 3 entries", len(out))
		}
		for i, w := range []int{want, -1, 3} {
			results, ok := out[i].([]state.Result)
			if !ok || w < 0 && results != nil || w >= 0 && len(results) != w {
				t.Fatalf("entry %d answered %#v, want %d results", i, out[i], w)
			}
		}
		if got, _ := fsm.applied.current(); got != index+2 || fsm.store.AppliedIndex() != index+2 {
			t.Fatalf("applied index %d (store %d), want %d", got, fsm.store.AppliedIndex(), index+2)
		}
	})
}

type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

// FuzzFSMRestore installs damaged and hostile snapshots (see state.FuzzRestore for the store's
// side). Restore closes the snapshot and never panics; refused, it leaves the state and the
// applied index as they were; accepted, the applied index waiters see is the store's (or stays
// above it), and the entries after it apply.
func FuzzFSMRestore(f *testing.F) {
	entries := fuzzEntries(f)
	snap := storeSnapshot(f, fuzzFSM(f, entries, 6).store)
	current := storeSnapshot(f, fuzzFSM(f, entries, 2).store)
	f.Add(snap, false)
	f.Add(snap[:len(snap)-5], true)
	f.Add(current, false)
	f.Add(snap[:len(snap)/2], false)
	f.Add([]byte(kv.Magic), true)
	f.Add([]byte("not a snapshot"), false)
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	f.Fuzz(func(t *testing.T, data []byte, fixCRC bool) {
		in := data
		if fixCRC { // a snapshot body: the test appends the end record, checksum right
			if !bytes.HasPrefix(data, []byte(kv.Magic)) {
				return
			}
			body := append(bytes.Clone(data), 'E')
			in = binary.BigEndian.AppendUint32(body, crc32.Checksum(body, castagnoli))
		}
		fsm := &fsm{store: state.Open(), log: discardLogger(), applied: newIndexWaiter(0)}
		if err := fsm.Restore(io.NopCloser(bytes.NewReader(current))); err != nil {
			t.Fatal(err)
		}
		before, beforeIndex := storeSnapshot(t, fsm.store), fsm.store.AppliedIndex()
		waited, _ := fsm.applied.current()
		rc := &closeRecorder{Reader: bytes.NewReader(in)}
		err := fsm.Restore(rc)
		if !rc.closed {
			t.Fatal("the snapshot was not closed")
		}
		got, _ := fsm.applied.current()
		if err != nil {
			if !bytes.Equal(storeSnapshot(t, fsm.store), before) || got != waited || fsm.store.AppliedIndex() != beforeIndex {
				t.Fatalf("a refused snapshot (%v) changed the state or the applied index (%d, was %d)", err, got, waited)
			}
			return
		}
		if got != max(waited, fsm.store.AppliedIndex()) {
			t.Fatalf("waiters see index %d, the store has %d (was %d)", got, fsm.store.AppliedIndex(), waited)
		}
		next := fsm.store.AppliedIndex() + 1
		out := fsm.ApplyBatch([]*raft.Log{{Index: next, Type: raft.LogCommand, Data: entries[len(entries)-2]}})
		if results, ok := out[0].([]state.Result); !ok || len(results) != 3 {
			t.Fatalf("the entry after the snapshot answered %#v", out[0])
		}
	})
}

// forwardResponseSeeds are the leader's answers as forward.go writes them.
func forwardResponseSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	var out [][]byte
	for _, resp := range []*forwardResponse{
		{Results: []state.Result{{EventID: "$a", RoomID: "!r:o", StreamPos: 7, Index: 9}, {Code: "M_FORBIDDEN", Message: "not a member of the room"}}, Index: 9},
		{Index: 42},
		{},
		{Error: "not the leader", Retry: true},
		{Error: "consensus: apply: timed out enqueuing operation: consensus unavailable"},
		{Results: []state.Result{}},
	} {
		var buf bytes.Buffer
		if err := writeFrame(&buf, resp, nil); err != nil {
			tb.Fatal(err)
		}
		out = append(out, buf.Bytes())
	}
	return out
}

// FuzzReadFrameResponse reads the leader's answer to a forwarded call, as a follower does: no
// frame crashes the reader, and an answer it accepts writes to a frame that reads back to the
// same answer (written the same way again).
func FuzzReadFrameResponse(f *testing.F) {
	for _, s := range forwardResponseSeeds(f) {
		f.Add(s)
	}
	for _, s := range forwardFrameSeeds {
		f.Add(s)
	}
	f.Add(frameOf(4+31, 31, `{"results":[null,{"index":-1}]}`))
	f.Add(frameOf(4+27, 27, `{"results":7,"index":"x"}  `))
	f.Fuzz(func(t *testing.T, frame []byte) {
		var resp forwardResponse
		payload, err := readFrame(bufio.NewReader(bytes.NewReader(frame)), &resp)
		if err != nil {
			return
		}
		var first, second bytes.Buffer
		if err := writeFrame(&first, &resp, payload); err != nil {
			t.Fatalf("an accepted answer does not write back: %v", err)
		}
		var again forwardResponse
		payload2, err := readFrame(bufio.NewReader(bytes.NewReader(first.Bytes())), &again)
		if err != nil || !bytes.Equal(payload, payload2) {
			t.Fatalf("%+v written back does not read: %v", resp, err)
		}
		if err := writeFrame(&second, &again, payload2); err != nil || !bytes.Equal(first.Bytes(), second.Bytes()) {
			t.Fatalf("round trip changed the answer:\n%q\n%q", first.Bytes(), second.Bytes())
		}
		if len(resp.Results) > 0 && !reflect.DeepEqual(resp.Results, again.Results) {
			t.Fatalf("results %+v read back as %+v", resp.Results, again.Results)
		}
	})
}

// FuzzMuxHandshake opens a cluster connection with the given bytes. Only a known stream kind
// with the cluster secret's proof is accepted (a Raft connection only if it names this node,
// n1), it reaches that stream's listener with exactly the bytes after the handshake, and
// anything else is refused and closed.
func FuzzMuxHandshake(f *testing.F) {
	proof := secretProof("s3cret")
	for _, kind := range []byte{streamRaft, streamForward, 'X'} {
		f.Add(append(append([]byte{kind}, proof[:]...), "\x00\x00\x00\x08rest"...))
	}
	for _, id := range []string{"\x02n1", "\x02n9", "\x03n1x", "\x01n", "\x00"} {
		f.Add(append(append([]byte{streamRaftTo}, proof[:]...), id+"\x00\x00\x00\x08rest"...))
	}
	wrong := secretProof("wrong")
	f.Add(append([]byte{streamForward}, wrong[:]...))
	f.Add(append([]byte{streamRaft}, proof[:31]...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &mux{nodeID: "n1", proof: proof, log: discardLogger(), streams: make(map[byte]*muxStream), closed: make(chan struct{}),
			conns: make(map[*trackedConn]struct{})}
		for _, k := range []byte{streamRaft, streamForward} {
			m.streams[k] = &muxStream{m: m, kind: k, conns: make(chan net.Conn, 1)}
		}
		server, client := net.Pipe()
		written := make(chan struct{})
		go func() {
			defer close(written)
			_, _ = client.Write(data)
			client.Close()
		}()
		m.handshake(m.track(server)) // serve tracks each connection before its handshake
		proven := len(data) >= 33 && bytes.Equal(data[1:33], proof[:])
		stream, rest := byte(0), 33 // the stream it reaches, and where the bytes after the handshake begin
		switch {
		case proven && data[0] == streamForward:
			stream = data[0]
		case proven && data[0] == streamRaftTo && bytes.HasPrefix(data[33:], []byte("\x02n1")):
			stream, rest = streamRaft, 36
		}
		want := stream != 0
		var got net.Conn
		for k, st := range m.streams {
			select {
			case c := <-st.conns:
				if got != nil || k != stream {
					t.Fatalf("a connection reached stream %q", k)
				}
				got = c
			default:
			}
		}
		if (got != nil) != want {
			t.Fatalf("accepted %v, want %v", got != nil, want)
		}
		if got != nil {
			read, err := io.ReadAll(got)
			if err != nil || !bytes.Equal(read, data[rest:]) {
				t.Fatalf("the stream read %q (%v), want %q", read, err, data[rest:])
			}
			got.Close()
			if len(m.conns) != 0 {
				t.Fatal("a closed connection is still tracked")
			}
		} else if _, err := server.Write([]byte{0}); err == nil {
			t.Fatal("a refused connection was left open")
		}
		<-written
	})
}
