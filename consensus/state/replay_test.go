package state

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// Determinism across the ways a node comes to apply a log. A node that applied every entry as
// it committed, a node that restarted (restored a snapshot taken at any point, then replayed the
// entries after it), and a node whose Raft handed it the entries in one call must hold the same
// state, the same caches (they decide what apply accepts next: the joined lists, the room
// records) and give every command the same result: else their states part for good at the
// first command they judge differently.

// replayLog is a log of entries as the FSM receives them, each the bytes of one Raft entry.
type replayLog struct {
	entries [][]byte
}

func (l *replayLog) add(tb testing.TB, cmds ...*Command) {
	tb.Helper()
	b, err := EncodeBatch(cmds)
	if err != nil {
		tb.Fatal(err)
	}
	l.entries = append(l.entries, b)
}

// raw adds an entry as it is: a crafted one, or one of the JSON log format.
func (l *replayLog) raw(data string) { l.entries = append(l.entries, []byte(data)) }

// decoded decodes entries from..to afresh (applying changes the decoded events), with their
// Raft indexes (from 1). An undecodable entry is one without commands, as the FSM hands it on.
func (l *replayLog) decoded(tb testing.TB, from, to int) []Entry {
	tb.Helper()
	out := make([]Entry, 0, to-from)
	for i := from; i < to; i++ {
		b, err := DecodeBatch(l.entries[i])
		if err != nil {
			b = nil
		}
		out = append(out, Entry{Index: uint64(i + 1), Batch: b})
	}
	return out
}

// apply applies entries from..to to s, one call per entry (per gets entries per call), and
// returns the results as text, one line per command.
func (l *replayLog) apply(tb testing.TB, s *Store, from, to, per int) []string {
	tb.Helper()
	var out []string
	entries := l.decoded(tb, from, to)
	for len(entries) > 0 {
		n := min(per, len(entries))
		res, _, err := s.ApplyEntries(entries[:n])
		if err != nil {
			tb.Fatalf("entries %d..%d: %v", entries[0].Index, entries[n-1].Index, err)
		}
		for i, r := range res {
			for j, c := range r {
				c.Index = 0
				out = append(out, fmt.Sprintf("entry %d command %d: %+v", entries[i].Index, j, c))
			}
		}
		entries = entries[n:]
	}
	return out
}

// checkReplays applies l live (one entry at a time), in one call, and from a snapshot taken
// after each entry, and fails unless all of them agree. It returns the live node's store.
func checkReplays(t *testing.T, l *replayLog) *Store {
	t.Helper()
	n := len(l.entries)
	live := Open()
	liveResults := make([][]string, n) // per entry
	snaps := make([][]byte, n+1)
	snaps[0] = snapshotOf(t, live)
	for i := range n {
		liveResults[i] = l.apply(t, live, i, i+1, 1)
		checkCaches(t, live)
		snaps[i+1] = snapshotOf(t, live)
	}
	want, wantCaches := dumpState(t, live, true), cacheState(live.rooms, live.members)
	compare := func(how string, s *Store, from int, results []string) {
		t.Helper()
		if d := diffState(want, dumpState(t, s, true)); d != "" {
			t.Fatalf("%s: the state differs from the live node's (- live):\n%s", how, d)
		}
		if d := diffState(wantCaches, cacheState(s.rooms, s.members)); d != "" {
			t.Fatalf("%s: the caches differ from the live node's (- live):\n%s", how, d)
		}
		var wantResults []string
		for _, r := range liveResults[from:] {
			wantResults = append(wantResults, r...)
		}
		if len(results) != len(wantResults) {
			t.Fatalf("%s: %d results, live %d", how, len(results), len(wantResults))
		}
		for i := range results {
			if results[i] != wantResults[i] {
				t.Fatalf("%s: %s\nlive: %s", how, results[i], wantResults[i])
			}
		}
	}
	whole := Open()
	compare("all in one call", whole, 0, l.apply(t, whole, 0, n, n))
	for k := 0; k <= n; k++ {
		s := restored(t, snaps[k])
		compare(fmt.Sprintf("restored after entry %d", k), s, k, l.apply(t, s, k, n, 1))
		// The restored node's own snapshot restores to the same state again.
		compare(fmt.Sprintf("restored after entry %d, then restored at the end", k), restored(t, snapshotOf(t, s)), n, nil)
		// A snapshot installed over a state (a node behind its leader) leaves nothing of it.
		over := restored(t, snaps[n])
		if err := over.Restore(bytes.NewReader(snaps[k])); err != nil {
			t.Fatal(err)
		}
		compare(fmt.Sprintf("the snapshot after entry %d installed over the last state", k), over, k, l.apply(t, over, k, n, 1))
	}
	return live
}

// TestANodeRestoredAnywhereAppliesAsTheLiveOne runs an org through every command kind (rooms of
// its own and of other orgs, memberships, power, redactions, bridges and their claims, relay
// cursors, logins and logouts) and checks that a restart at any entry changes nothing.
func TestANodeRestoredAnywhereAppliesAsTheLiveOne(t *testing.T) {
	const alice, bob, erin, frank = fzAlice, fzBob, fzErin, fzFrank
	l := &replayLog{}
	pub := &chain{t: t, room: "!pub:acme.test"}
	priv := &chain{t: t, room: "!priv:acme.test"}
	far := &chain{t: t, room: "!far:globex.test"}
	l.add(t, &Command{Kind: KindRegister, Register: &Register{UserID: alice, PasswordHash: []byte("a"), TokenHash: "tok-a", CreatedTS: 1}},
		&Command{Kind: KindRegister, Register: &Register{UserID: bob, PasswordHash: []byte("b"), TokenHash: "tok-b", CreatedTS: 2}})
	l.add(t, &Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: pub.room, Alias: "#pub:acme.test", Events: []*event.Event{
		pub.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public", Federate: true}),
		member(pub, alice, alice, Join),
	}}})
	l.add(t, ev(member(pub, bob, bob, Join), ""), ev(nextFrom(pub, "globex.test", fzCarol, "m.room.member", sk(fzCarol), map[string]string{"membership": Join}), ""))
	msg := text(pub, alice, "hello")
	l.add(t, ev(msg, "t1"), ev(text(pub, bob, "hi"), "t2"))
	l.add(t, ev(msg.Clone(), "t1"), ev(text(pub, fzCarol, "from afar"), "")) // a repeat; carol's own org relays hers
	l.add(t, ev(pub.next(bob, "m.room.redaction", nil, map[string]string{}), ""))
	redaction := pub.next(alice, "m.room.redaction", nil, map[string]string{})
	redaction.Redacts = msg.EventID
	if err := event.Seal(redaction); err != nil {
		t.Fatal(err)
	}
	pub.last = redaction.EventID
	l.add(t, ev(redaction, "t3"))
	power := DefaultPowerLevels(alice)
	power.Users = map[string]int64{alice: 100, bob: 50, erin: 10}
	power.Events = map[string]int64{"m.room.message": 10}
	l.add(t, ev(pub.next(alice, "m.room.power_levels", sk(""), power), ""), ev(pub.next(bob, "m.room.topic", sk(""), map[string]string{"topic": "t"}), ""))
	l.add(t, &Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: priv.room, Events: []*event.Event{
		priv.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "private"}),
		member(priv, alice, alice, Join),
		member(priv, alice, bob, Invite),
	}}}, ev(member(priv, bob, bob, Join), ""), ev(text(priv, bob, "in"), "p1"))
	l.add(t, ev(member(priv, alice, bob, Leave), ""), ev(text(priv, bob, "kicked"), "p2"), ev(member(priv, alice, bob, Ban), ""))
	l.add(t, &Command{Kind: KindReceipt, Receipt: &Receipt{RoomID: pub.room, UserID: bob, EventID: msg.EventID}},
		&Command{Kind: KindLogin, Login: &Login{UserID: bob, TokenHash: "tok-b2"}},
		&Command{Kind: KindLogout, Logout: &Logout{TokenHash: "tok-b"}})
	l.add(t, &Command{Kind: KindEvent, Event: &EventCommand{InviteRoom: true,
		Event: nextFrom(far, "globex.test", fzDave, "m.room.member", sk(alice), map[string]string{"membership": Invite})}})
	l.add(t, &Command{Kind: KindRemoteRoom, RemoteRoom: &RemoteRoom{RoomID: far.room, Events: []*event.Event{
		nextFrom(far, "globex.test", fzDave, "m.room.create", sk(""), CreateContent{Creator: fzDave, Visibility: "public", Federate: true}),
		nextFrom(far, "globex.test", fzDave, "m.room.member", sk(fzDave), map[string]string{"membership": Join}),
		member(far, alice, alice, Join),
	}}})
	l.add(t, ev(text(far, alice, "joined far"), "f1"))
	l.add(t, &Command{Kind: KindSigningKey, SigningKey: &SigningKey{KeyID: "k1", Seed: bytes.Repeat([]byte{7}, 32)}},
		&Command{Kind: KindFedCursor, FedCursor: &FedCursor{Destination: "globex.test", Pos: 4}},
		&Command{Kind: KindBridgeCursor, BridgeCursor: &BridgeCursor{Pos: 3}})
	l.add(t, &Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "b1", UserID: erin, CreatedTS: 3,
		Events: []*event.Event{member(pub, erin, erin, Join), text(pub, erin, "from irc")}}})
	// A bridge command refused after its join was stored (the power levels refuse frank's
	// message): the whole entry is undone and applied again.
	l.add(t, ev(text(pub, alice, "before"), "t4"),
		&Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "b2", UserID: frank, CreatedTS: 4,
			Events: []*event.Event{member(pub, frank, frank, Join), text(pub, frank, "not allowed to speak")}}},
		ev(text(pub, alice, "after"), "t5"))
	l.add(t, &Command{Kind: KindBridgeClaim, BridgeClaim: &BridgeClaim{Bridge: "irc", TxnID: "b3", UserID: erin, RoomID: far.room, Claim: "c1"}},
		&Command{Kind: KindBridgeClaim, BridgeClaim: &BridgeClaim{Bridge: "irc", TxnID: "b3", UserID: erin, RoomID: far.room, Claim: "c2"}})
	l.add(t, &Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "b3", UserID: erin}})
	l.add(t, ev(member(pub, bob, bob, Leave), ""), ev(text(pub, bob, "gone"), "t6"), ev(text(pub, alice, "last"), "t7"))
	l.raw(`{"c":[{"k":"register","register":{"user_id":"@old:acme.test","token_hash":"tok-old"}}]}`) // the JSON log format
	checkReplays(t, l)
}

// A log entry holding a null command (a JSON batch, or a binary one with a JSON command that
// is null) is answered with a refusal, as every other malformed command is, and the other
// commands of its entry apply. It used to stop the state machine of every node on a nil
// pointer, at that entry, at every restart: the cluster could not apply anything again.
func TestANullCommandIsRefused(t *testing.T) {
	base := newFuzzBase(t)
	snap := snapshotOf(t, base.store)
	register := `{"k":"register","register":{"user_id":"@new:acme.test","token_hash":"tok-new"}}`
	for _, data := range [][]byte{
		[]byte(`{"c":[null]}`),
		[]byte(`{"c":[null,` + register + `]}`),
		append([]byte{batchVersion, 1 + 1, tagJSON, 4}, "null"...), // list counts are n+1
		append(append([]byte{batchVersion, 2 + 1, tagJSON, 4}, "null"...), append([]byte{tagJSON, byte(len(register))}, register...)...),
	} {
		b, err := DecodeBatch(data)
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		s := restored(t, snap)
		before := dumpState(t, s, false)
		var res [][]Result
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("%q: applying panicked (the FSM of every node stops there): %v", data, p)
				}
			}()
			res, _, err = s.ApplyEntries([]Entry{{Index: s.AppliedIndex() + 1, Batch: b}})
		}()
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		if r := res[0][0]; r.Code != CodeInvalid {
			t.Fatalf("%q: the null command: %+v, want %s", data, r, CodeInvalid)
		}
		if len(b.Commands) == 1 {
			if d := diffState(before, dumpState(t, s, false)); d != "" {
				t.Fatalf("%q changed the state:\n%s", data, d)
			}
			continue
		}
		if r := res[0][1]; !r.OK() {
			t.Fatalf("%q: the register after it: %+v", data, r)
		}
		if _, ok := s.Account("@new:acme.test"); !ok {
			t.Fatalf("%q: the register after the null command was not applied", data)
		}
	}
}

// A room id holding a NUL is refused wherever a room is made (create_room, remote_room, a remote
// invite). Keys of the state join a room id and a user id with a NUL, so such a room's member
// records were read back, when the joined lists are loaded from a snapshot, as another room's
// (the part before the NUL) with other users: the node that restarted no longer saw the room's
// members joined, refused their messages that every other node stored, and its stream positions,
// and so its whole state, parted from theirs for good.
func TestARoomIDWithANULIsRefused(t *testing.T) {
	const alice = fzAlice
	for _, tc := range []struct {
		name string
		make func(c *chain) *Command
	}{
		{"create_room", func(c *chain) *Command {
			return &Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: c.room, Events: []*event.Event{
				c.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public"}),
				member(c, alice, alice, Join),
			}}}
		}},
		{"remote_room", func(c *chain) *Command {
			return &Command{Kind: KindRemoteRoom, RemoteRoom: &RemoteRoom{RoomID: c.room, Events: []*event.Event{
				nextFrom(c, "globex.test", fzDave, "m.room.create", sk(""), CreateContent{Creator: fzDave, Visibility: "public", Federate: true}),
				member(c, alice, alice, Join),
			}}}
		}},
		{"remote invite", func(c *chain) *Command {
			return &Command{Kind: KindEvent, Event: &EventCommand{InviteRoom: true,
				Event: nextFrom(c, "globex.test", fzDave, "m.room.member", sk(alice), map[string]string{"membership": Invite})}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &chain{t: t, room: "!a\x00b:globex.test"}
			l := &replayLog{}
			l.add(t, &Command{Kind: KindRegister, Register: &Register{UserID: alice, TokenHash: "tok-a"}})
			l.add(t, tc.make(c))
			// Joins (a partial room takes its home org's), then messages of those joined.
			l.add(t, ev(member(c, alice, alice, Join), ""))
			l.add(t, ev(nextFrom(c, "globex.test", fzDave, "m.room.member", sk(fzDave), map[string]string{"membership": Join}), ""))
			l.add(t, ev(text(c, alice, "hello"), "t1"))
			l.add(t, ev(nextFrom(c, "globex.test", fzDave, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hi"}), ""))
			live := checkReplays(t, l)
			if _, ok := live.Room(c.room); ok {
				t.Fatalf("a room %q was made", c.room)
			}
		})
	}
}
