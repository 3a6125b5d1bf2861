package node

import (
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// peerStore is a store with alice and bob joined to a room, so that signals about them have an
// audience to push to.
func peerStore(tb testing.TB) *state.Store {
	tb.Helper()
	const alice, bob, room = "@alice:test.local", "@bob:test.local", "!r:test.local"
	s := state.Open()
	var last string
	var depth int64
	next := func(sender, typ string, stateKey *string, content string) *event.Event {
		depth++
		e := &event.Event{RoomID: room, Sender: sender, Origin: "test.local", OriginTS: depth, Type: typ, StateKey: stateKey,
			Content: json.RawMessage(content), PrevEvents: []string{}, Depth: depth}
		if last != "" {
			e.PrevEvents = []string{last}
		}
		if err := event.Seal(e); err != nil {
			tb.Fatal(err)
		}
		last = e.EventID
		return e
	}
	empty, a, b := "", alice, bob
	res, _, err := s.ApplyEntries([]state.Entry{{Index: 1, Batch: &state.Batch{Commands: []*state.Command{
		{Kind: state.KindCreateRoom, CreateRoom: &state.CreateRoom{RoomID: room, Events: []*event.Event{
			next(alice, "m.room.create", &empty, `{"creator":"@alice:test.local","visibility":"public"}`),
			next(alice, "m.room.member", &a, `{"membership":"join"}`),
		}}},
		{Kind: state.KindEvent, Event: &state.EventCommand{Event: next(bob, "m.room.member", &b, `{"membership":"join"}`)}},
	}}}})
	if err != nil || !res[0][0].OK() || !res[0][1].OK() {
		tb.Fatalf("peer store: %+v %v", res, err)
	}
	return s
}

// peerSignalSeeds are the signals a node sends its peers, as its hub writes them.
func peerSignalSeeds(tb testing.TB, store *state.Store, m *metrics) [][]byte {
	tb.Helper()
	var sent [][]byte
	h := newHub(store, m, slog.New(slog.DiscardHandler), time.Hour)
	defer h.close()
	h.nodeID = "node2"
	h.peers = func(b []byte) { sent = append(sent, b) }
	h.announcePresence("@alice:test.local", true)
	h.announcePresence("@alice:test.local", false)
	h.setLocalTyping("!r:test.local", "@bob:test.local", true, 20*time.Second)
	h.setLocalTyping("!r:test.local", "@bob:test.local", false, 0)
	h.sendPeers(peerSignal{Kind: "online_set", Users: []string{"@alice:test.local", "@bob:test.local"}}) // refreshPresence
	h.sendPeers(peerSignal{Kind: "online_set"})
	// SetRemotePresence, passing on another org's presence.
	h.sendPeers(peerSignal{Kind: "org_presence", User: "@carol:globex.test", Online: true, TS: 1700000000000, TimeoutMS: (3 * time.Minute).Milliseconds()})
	h.sendPeers(peerSignal{Kind: "org_presence", User: "@carol:globex.test", TS: 1700000000001})
	return sent
}

// FuzzPeerSignal hands a node a typing or presence signal from another node of its org (over
// the cluster channel). No signal crashes the hub, and what it records is what the signal
// says: nothing for a signal it cannot read, of no node or its own, or of an unknown kind;
// typing with its timeout (30 s when out of 1 ms..2 min); the sending node's online users; and
// another org's user's presence, whose TTL is the one given up to 10 minutes (3 minutes when
// none). Until 2026-12 a TTL of more than 2^63 ns overflowed: it fell back to 3 minutes, or
// wrapped to a moment (the seeds with huge timeout_ms).
func FuzzPeerSignal(f *testing.F) {
	store := peerStore(f)
	m := newMetrics()
	for _, s := range peerSignalSeeds(f, store, m) {
		f.Add(s)
	}
	for _, s := range []string{
		`{"k":"typing","node":"node1","room":"!r:test.local","user":"@bob:test.local","typing":true}`,
		`{"k":"typing","node":"node2","room":"!r:test.local","user":"@bob:test.local","typing":true,"timeout_ms":-5}`,
		`{"k":"org_presence","node":"node2","user":"@carol:globex.test","online":true,"ts":1,"timeout_ms":18446744073709}`,
		`{"k":"org_presence","node":"node2","user":"@carol:globex.test","online":true,"ts":1,"timeout_ms":9223372036854775807}`,
		`{"k":"org_presence","node":"node2","user":"@carol:globex.test","online":true,"ts":1,"timeout_ms":288230376151712504}`, // wraps to 0.76 s
		`{"k":"org_presence","node":"node2","user":"@carol:globex.test","online":true,"ts":1,"timeout_ms":-288230376151710504}`,
		`{"k":"online_set","node":"node2","users":["@a:x","@a:x",""]}`,
		`{"k":"nope","node":"node2"}`,
		`{"k":"presence","node":"","user":"@alice:test.local","online":true}`,
		`[1,2]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		h := newHub(store, m, slog.New(slog.DiscardHandler), time.Hour)
		defer h.close()
		h.nodeID = "node1"
		h.ready.Store(true)
		start := time.Now()
		h.fromPeer(msg)
		end := time.Now()

		var sig peerSignal
		valid := json.Unmarshal(msg, &sig) == nil && sig.Node != "" && sig.Node != "node1"
		h.typingMu.Lock()
		typing := h.typing
		h.typingMu.Unlock()
		h.remoteMu.Lock()
		defer h.remoteMu.Unlock()
		h.orgs.mu.Lock()
		defer h.orgs.mu.Unlock()
		records := len(typing) + len(h.remote) + len(h.orgs.entries)
		// within checks that expiry is timeout after the signal was handled.
		within := func(expiry time.Time, timeout time.Duration) bool {
			return !expiry.Before(start.Add(timeout)) && !expiry.After(end.Add(timeout))
		}
		switch kind := sig.Kind; {
		case !valid || kind != "typing" && kind != "presence" && kind != "online_set" && kind != "org_presence":
			if records != 0 {
				t.Fatalf("%q recorded %v %v %v", msg, typing, h.remote, h.orgs.entries)
			}
		case kind == "typing":
			timeout := time.Duration(sig.TimeoutMS) * time.Millisecond
			if sig.TimeoutMS <= 0 || sig.TimeoutMS > 120000 {
				timeout = 30 * time.Second
			}
			expiry, ok := typing[sig.Room][sig.User]
			if sig.Typing && timeout >= time.Second && (!ok || !within(expiry, timeout)) || !sig.Typing && ok || records > 1 {
				t.Fatalf("%q: typing %v (expiry in %v, want %v)", msg, typing, expiry.Sub(start), timeout)
			}
		case kind == "presence" || kind == "online_set":
			want := map[string]bool{}
			if kind == "presence" && sig.Online {
				want[sig.User] = true
			}
			for _, u := range sig.Users {
				want[u] = kind == "online_set"
			}
			maps.DeleteFunc(want, func(_ string, online bool) bool { return !online })
			rn := h.remote[sig.Node]
			if rn == nil || len(h.remote) != 1 || !maps.Equal(rn.users, want) {
				t.Fatalf("%q: node %s online %v, want %v", msg, sig.Node, rn, slices.Sorted(maps.Keys(want)))
			}
		case kind == "org_presence":
			e, ok := h.orgs.entries[sig.User]
			if sig.User == "" {
				if records != 0 {
					t.Fatalf("%q recorded %v", msg, h.orgs.entries)
				}
				return
			}
			ttl := defaultPresenceTTL
			if sig.TimeoutMS >= maxPresenceTTL.Milliseconds() {
				ttl = maxPresenceTTL
			} else if sig.TimeoutMS > 0 {
				ttl = time.Duration(sig.TimeoutMS) * time.Millisecond
			}
			if !ok || e.online != sig.Online || e.ts != sig.TS || !within(e.expiry, ttl) || records != 1 {
				t.Fatalf("%q: recorded %+v (expiry in %v), want online %v at %d for %v", msg, e, e.expiry.Sub(start), sig.Online, sig.TS, ttl)
			}
		}
	})
}
