package state

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/kv"
	bolt "go.etcd.io/bbolt"
)

// Fuzz targets for what the state machine decodes: the stream bucket's values, the Raft log's
// batches as they are applied, and snapshots as they are restored. Their seeds are encodings
// the code itself wrote for fuzzBase, a small org with every kind of record in it.

const (
	fzAlice = "@alice:acme.test"
	fzBob   = "@bob:acme.test"
	fzCarol = "@carol:globex.test"
	fzDave  = "@dave:globex.test"
	fzErin  = "@irc_erin:acme.test"  // a bridge's virtual user
	fzFrank = "@irc_frank:acme.test" // another, new
)

// fuzzBase is an org with two users, a public federating room (alias, members of two orgs, a
// message, a receipt, a bridge's virtual user), a private room with an invite, a partial room
// known through a remote invite, a signing key and relay cursors.
type fuzzBase struct {
	store          *Store
	pub, priv, far *chain
	msg            *event.Event // alice's message in pub
}

// nextFrom is chain.next for an event of another org.
func nextFrom(c *chain, origin, sender, typ string, stateKey *string, content any) *event.Event {
	c.t.Helper()
	e := c.next(sender, typ, stateKey, content)
	e.Origin, e.EventID = origin, ""
	if err := event.Seal(e); err != nil {
		c.t.Fatal(err)
	}
	c.last = e.EventID
	return e
}

func ev(e *event.Event, txnID string) *Command {
	return &Command{Kind: KindEvent, Event: &EventCommand{Event: e, TxnID: txnID}}
}

func member(c *chain, sender, target, membership string) *event.Event {
	return c.next(sender, "m.room.member", sk(target), map[string]string{"membership": membership})
}

func text(c *chain, sender, body string) *event.Event {
	return c.next(sender, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": body})
}

func newFuzzBase(tb testing.TB) *fuzzBase {
	tb.Helper()
	s := Open()
	f := &fsmT{t: tb, s: s}
	b := &fuzzBase{store: s, pub: &chain{t: tb, room: "!pub:acme.test"}, priv: &chain{t: tb, room: "!priv:acme.test"},
		far: &chain{t: tb, room: "!far:globex.test"}}
	must := func(results []Result) {
		tb.Helper()
		for i, r := range results {
			if !r.OK() {
				tb.Fatalf("fuzz base: command %d: %+v", i, r)
			}
		}
	}
	must(f.apply(
		&Command{Kind: KindRegister, Register: &Register{UserID: fzAlice, PasswordHash: []byte("hash-a"), TokenHash: "tok-alice", CreatedTS: 1}},
		&Command{Kind: KindRegister, Register: &Register{UserID: fzBob, PasswordHash: []byte("hash-b"), TokenHash: "tok-bob", CreatedTS: 2}},
	))
	must(f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: b.pub.room, Alias: "#pub:acme.test", Events: []*event.Event{
		b.pub.next(fzAlice, "m.room.create", sk(""), CreateContent{Creator: fzAlice, Visibility: "public", Federate: true}),
		member(b.pub, fzAlice, fzAlice, Join),
		b.pub.next(fzAlice, "m.room.name", sk(""), map[string]string{"name": "Public"}),
	}}}))
	must(f.apply(ev(member(b.pub, fzBob, fzBob, Join), ""), ev(nextFrom(b.pub, "globex.test", fzCarol, "m.room.member", sk(fzCarol), map[string]string{"membership": Join}), "")))
	b.msg = text(b.pub, fzAlice, "hello <world> & all")
	must(f.apply(ev(b.msg, "t1")))
	must(f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: b.priv.room, Events: []*event.Event{
		b.priv.next(fzAlice, "m.room.create", sk(""), CreateContent{Creator: fzAlice, Visibility: "private"}),
		member(b.priv, fzAlice, fzAlice, Join),
		member(b.priv, fzAlice, fzBob, Invite),
	}}}))
	invite := nextFrom(b.far, "globex.test", fzDave, "m.room.member", sk(fzAlice), map[string]string{"membership": Invite})
	must(f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: invite, InviteRoom: true}}))
	must(f.apply(
		&Command{Kind: KindSigningKey, SigningKey: &SigningKey{KeyID: "k1", Seed: bytes.Repeat([]byte{7}, 32)}},
		&Command{Kind: KindFedCursor, FedCursor: &FedCursor{Destination: "globex.test", Pos: 3}},
		&Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "b1", UserID: fzErin, CreatedTS: 3,
			Events: []*event.Event{member(b.pub, fzErin, fzErin, Join), text(b.pub, fzErin, "from irc")}}},
		&Command{Kind: KindBridgeCursor, BridgeCursor: &BridgeCursor{Pos: 2}},
		&Command{Kind: KindReceipt, Receipt: &Receipt{RoomID: b.pub.room, UserID: fzBob, EventID: b.msg.EventID}},
	))
	return b
}

// applySeeds are commands, alone and together, that reach every command kind and the rules'
// main verdicts on fuzzBase.
func (b *fuzzBase) applySeeds(tb testing.TB) [][]*Command {
	tb.Helper()
	pub, priv, far := b.pub, b.priv, b.far
	newRoom := &chain{t: tb, room: "!new:acme.test"}
	other := &chain{t: tb, room: "!other:globex.test"}
	power := DefaultPowerLevels(fzAlice)
	power.Users = map[string]int64{fzAlice: 100, fzBob: 50}
	announce := DefaultPowerLevels(fzAlice)
	announce.Events = map[string]int64{"m.room.message": 50}
	seeds := [][]*Command{
		{{Kind: KindRegister, Register: &Register{UserID: "@eve:acme.test", PasswordHash: []byte("h"), TokenHash: "tok-eve", CreatedTS: 9}}},
		{{Kind: KindRegister, Register: &Register{UserID: fzAlice, PasswordHash: []byte("h"), TokenHash: "tok-x"}}},
		{{Kind: KindLogin, Login: &Login{UserID: fzBob, TokenHash: "tok-bob-2"}}},
		{{Kind: KindLogin, Login: &Login{UserID: "@nobody:acme.test", TokenHash: "tok-n"}}},
		{{Kind: KindLogout, Logout: &Logout{TokenHash: "tok-alice"}}},
		{{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: newRoom.room, Alias: "#new:acme.test", Events: []*event.Event{
			newRoom.next(fzBob, "m.room.create", sk(""), CreateContent{Creator: fzBob, Visibility: "public"}),
			member(newRoom, fzBob, fzBob, Join),
		}}}},
		{{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: pub.room, Events: []*event.Event{
			pub.next(fzBob, "m.room.create", sk(""), CreateContent{Creator: fzBob}),
		}}}},
		{ev(text(pub, fzBob, "hi alice"), "b-1")},
		{ev(text(priv, fzCarol, "not a member"), "")},
		{ev(pub.next(fzAlice, "m.room.redaction", nil, map[string]string{}), "")},
		{ev(pub.next(fzAlice, "m.room.power_levels", sk(""), power), "")},
		{ev(pub.next(fzBob, "m.room.topic", sk(""), map[string]string{"topic": "no power"}), "")},
		{ev(member(pub, fzAlice, fzBob, Leave), "")},
		{ev(member(pub, fzAlice, fzCarol, Ban), "")},
		{ev(member(priv, fzBob, fzBob, Join), "")},
		{ev(member(pub, fzBob, fzBob, Leave), "")},
		{ev(b.msg.Clone(), "")},   // the same event again
		{ev(b.msg.Clone(), "t2")}, // the same event as a new send
		{ev(b.msg.Clone(), "t1")}, // a repeated send
		{{Kind: KindReceipt, Receipt: &Receipt{RoomID: pub.room, UserID: fzAlice, EventID: b.msg.EventID}}},
		{{Kind: KindReceipt, Receipt: &Receipt{RoomID: priv.room, UserID: fzBob, EventID: b.msg.EventID}}},
		{{Kind: KindSigningKey, SigningKey: &SigningKey{KeyID: "k2", Seed: make([]byte, 32)}}},
		{{Kind: KindFedCursor, FedCursor: &FedCursor{Destination: "globex.test", Pos: 9}}},
		{{Kind: KindRemoteRoom, RemoteRoom: &RemoteRoom{RoomID: far.room, Alias: "#far:globex.test", Events: []*event.Event{
			nextFrom(far, "globex.test", fzDave, "m.room.create", sk(""), CreateContent{Creator: fzDave, Visibility: "public", Federate: true}),
			nextFrom(far, "globex.test", fzDave, "m.room.member", sk(fzDave), map[string]string{"membership": Join}),
			member(far, fzAlice, fzAlice, Join),
		}}}},
		{{Kind: KindRemoteRoom, RemoteRoom: &RemoteRoom{RoomID: other.room, Events: []*event.Event{
			nextFrom(other, "globex.test", fzDave, "m.room.create", sk(""), CreateContent{Creator: fzDave, Federate: true}),
		}}}},
		{ev(nextFrom(far, "globex.test", fzDave, "m.room.member", sk(fzAlice), map[string]string{"membership": Leave}), "")},
		{ev(member(far, fzAlice, fzAlice, Leave), "")},
		{{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "b2", UserID: fzErin, Events: []*event.Event{text(pub, fzErin, "again")}}}},
		{{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "b1", UserID: fzErin}}},
		{{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "b3", UserID: fzErin, Events: []*event.Event{
			text(pub, fzErin, "refused with the next"), text(pub, fzAlice, "not erin's")}}}},
		// A new virtual user's join is allowed, its message then refused by the power levels (an
		// announcement room): the join is undone with it, in an entry with other commands too.
		{
			ev(pub.next(fzAlice, "m.room.power_levels", sk(""), announce), ""),
			{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "b4", UserID: fzFrank, CreatedTS: 4, Events: []*event.Event{
				member(pub, fzFrank, fzFrank, Join), text(pub, fzFrank, "not allowed to speak")}}},
			ev(text(pub, fzAlice, "announcement"), "a-1"),
		},
		{{Kind: KindBridgeCursor, BridgeCursor: &BridgeCursor{Pos: 7}}},
		// A claim ahead of a join in another org's room, a second one, the command over it; a
		// claim released.
		{
			{Kind: KindBridgeClaim, BridgeClaim: &BridgeClaim{Bridge: "irc", TxnID: "b5", UserID: fzErin, RoomID: far.room, Claim: "c1"}},
			{Kind: KindBridgeClaim, BridgeClaim: &BridgeClaim{Bridge: "irc", TxnID: "b5", UserID: fzErin, RoomID: far.room, Claim: "c2"}},
			{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "b5", UserID: fzErin}},
		},
		{
			{Kind: KindBridgeClaim, BridgeClaim: &BridgeClaim{Bridge: "irc", TxnID: "b6", UserID: fzErin, RoomID: pub.room, Claim: "c3"}},
			{Kind: KindBridgeClaim, BridgeClaim: &BridgeClaim{Bridge: "irc", TxnID: "b6", UserID: fzErin, RoomID: pub.room, Claim: "c3", Release: true}},
		},
		{{Kind: KindBridgeClaim, BridgeClaim: &BridgeClaim{Bridge: "irc", TxnID: "b1", UserID: fzErin, RoomID: pub.room, Claim: "c4"}}},
		{{Kind: "unknown"}, {Kind: KindEvent}, {Kind: KindRemoteRoom, RemoteRoom: &RemoteRoom{}}},
	}
	var all []*Command
	for _, s := range seeds {
		all = append(all, s...)
	}
	return append(seeds, all)
}

// snapshotOf is s's snapshot.
func snapshotOf(tb testing.TB, s *Store) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := s.Snapshot(&buf); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func restored(tb testing.TB, snap []byte) *Store {
	tb.Helper()
	s := Open()
	if err := s.Restore(bytes.NewReader(snap)); err != nil {
		tb.Fatal(err)
	}
	return s
}

// dumpState is every non-empty bucket's contents, as "bucket NUL key" -> value, read from the
// store's own snapshot. The applied index is left out unless withIndex: it moves with every
// entry, refused or not.
func dumpState(tb testing.TB, s *Store, withIndex bool) map[string]string {
	tb.Helper()
	b := snapshotOf(tb, s)
	if !bytes.HasPrefix(b, []byte(kv.Magic)) {
		tb.Fatalf("snapshot does not start with the magic: %q", b)
	}
	b = b[len(kv.Magic):]
	uvarint := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			tb.Fatal("bad snapshot varint")
		}
		b = b[n:]
		return v
	}
	take := func() string {
		n := uvarint()
		s := string(b[:n])
		b = b[n:]
		return s
	}
	out := map[string]string{}
	for len(b) > 0 && b[0] == 'B' {
		b = b[1:]
		name := take()
		for n := uvarint(); n > 0; n-- {
			k, v := take(), take()
			if name == string(bucketMeta) && (k == string(keyAppliedIndex) && !withIndex || k == string(keyStreamPos) && v == "\x00\x00\x00\x00\x00\x00\x00\x00") {
				continue
			}
			out[name+"\x00"+k] = v
		}
	}
	if len(b) != 5 || b[0] != 'E' {
		tb.Fatalf("snapshot ends in %q", b)
	}
	return out
}

func diffState(a, b map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(a)) {
		if v, ok := b[k]; !ok {
			out = append(out, fmt.Sprintf("- %q = %q", k, a[k]))
		} else if v != a[k] {
			out = append(out, fmt.Sprintf("~ %q = %q -> %q", k, a[k], v))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(b)) {
		if _, ok := a[k]; !ok {
			out = append(out, fmt.Sprintf("+ %q = %q", k, b[k]))
		}
	}
	return strings.Join(out, "\n")
}

// cacheState is what the store's in-memory caches hold: room records and joined lists.
func cacheState(rooms *roomCache, members *memberCache) map[string]string {
	out := map[string]string{}
	rooms.mu.RLock()
	for id, r := range rooms.rooms {
		out["room\x00"+id] = string(r.AppendJSON(nil))
	}
	rooms.mu.RUnlock()
	members.mu.RLock()
	for id, l := range members.joined {
		if len(l) > 0 {
			out["joined\x00"+id] = strings.Join(l, "\x00")
		}
	}
	members.mu.RUnlock()
	return out
}

// checkCaches fails unless the caches hold what loading them from the database gives: what
// reads are served from agrees with the state.
func checkCaches(tb testing.TB, s *Store) {
	tb.Helper()
	rooms, members := newRoomCache(), newMemberCache()
	if err := rooms.load(s.db); err != nil {
		tb.Fatalf("rooms no longer load: %v", err)
	}
	if err := members.load(s.db); err != nil {
		tb.Fatalf("members no longer load: %v", err)
	}
	if d := diffState(cacheState(rooms, members), cacheState(s.rooms, s.members)); d != "" {
		tb.Fatalf("the caches differ from the database (- database, + cache):\n%s", d)
	}
}

func sameResult(a, b Result) bool {
	a.Index, b.Index = 0, 0
	return a == b
}

// FuzzApplyBatch decodes a Raft log entry and applies it to fuzzBase. Applying never panics
// and never fails: a failure makes every node's FSM stop at that entry, again at every restart.
// A refused command changes nothing (the caches neither; a bridge command not even the events
// before its refused one, nor its virtual user), the caches always agree with the database, and
// the commands have the same outcome and leave the same state whether applied in one entry or
// one entry each.
func FuzzApplyBatch(f *testing.F) {
	base := newFuzzBase(f)
	snap := snapshotOf(f, base.store)
	for _, c := range unstorableCommands {
		f.Add([]byte(c))
	}
	for _, cmds := range base.applySeeds(f) {
		b, err := EncodeBatch(cmds)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		j, err := jsonEncodeBatch(cmds) // the log's format before the binary one
		if err != nil {
			f.Fatal(err)
		}
		f.Add(j)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		batch, err := DecodeBatch(data)
		if err != nil {
			return
		}
		whole := restored(t, snap)
		index := whole.AppliedIndex() + 1
		before := dumpState(t, whole, true)
		results, _, err := whole.ApplyEntries([]Entry{{Index: index, Batch: batch}})
		if err != nil {
			if d := diffState(before, dumpState(t, whole, true)); d != "" {
				t.Errorf("a failed entry changed the state:\n%s", d)
			}
			t.Fatalf("applying the entry failed (the FSM panics on that): %v", err)
		}
		checkCaches(t, whole)
		if len(batch.Commands) > 64 {
			return // enough: each command is checked below for smaller batches
		}
		again, err := DecodeBatch(data) // applying changes the events: a fresh copy
		if err != nil {
			t.Fatalf("the entry decoded once only: %v", err)
		}
		each := restored(t, snap)
		for i, cmd := range again.Commands {
			before := dumpState(t, each, false)
			cachesBefore := cacheState(each.rooms, each.members)
			r, _, err := each.ApplyEntries([]Entry{{Index: index + uint64(i), Batch: &Batch{Commands: []*Command{cmd}}}})
			if err != nil {
				t.Fatalf("command %d alone failed (the FSM panics on that): %v", i, err)
			}
			if !sameResult(r[0][0], results[0][i]) {
				t.Fatalf("command %d: %+v alone, %+v in one entry", i, r[0][0], results[0][i])
			}
			if r[0][0].OK() {
				continue
			}
			if d := diffState(before, dumpState(t, each, false)); d != "" {
				t.Fatalf("command %d was refused (%+v) but changed the state:\n%s", i, r[0][0], d)
			}
			if d := diffState(cachesBefore, cacheState(each.rooms, each.members)); d != "" {
				t.Fatalf("command %d was refused (%+v) but changed the caches:\n%s", i, r[0][0], d)
			}
		}
		checkCaches(t, each)
		if d := diffState(dumpState(t, whole, false), dumpState(t, each, false)); d != "" {
			t.Fatalf("one entry and one entry per command left different states (- one entry):\n%s", d)
		}
	})
}

// unstorableCommands are entries that stopped the state machine of every node (which panics
// when applying fails) before apply refused them: nil events panicked, empty keys and events of
// another room failed the entry. FuzzApplyBatch found the first (testdata/fuzz/FuzzApplyBatch).
var unstorableCommands = []string{
	`{"C":[{"k":"register","register":{}}]}`,
	`{"c":[{"k":"register","register":{"user_id":"@x:acme.test"}}]}`,
	`{"c":[{"k":"login","login":{"user_id":"@alice:acme.test"}}]}`,
	`{"c":[{"k":"create_room","create_room":{"room_id":"!x:a","events":[null]}}]}`,
	`{"c":[{"k":"create_room","create_room":{"room_id":"!x:a","events":[{"type":"m.room.create","room_id":"!x:a","event_id":"$1","content":{}},null]}}]}`,
	`{"c":[{"k":"create_room","create_room":{"room_id":"!x:a","alias":"#x:a","events":[{"type":"m.room.create","room_id":"!x:a","event_id":"$1","content":{}},{"type":"m.room.name","room_id":"!y:a","event_id":"$2","content":{}}]}}]}`,
	`{"c":[{"k":"create_room","create_room":{"room_id":"","events":[{"type":"m.room.create","room_id":"","event_id":"$1","content":{}}]}}]}`,
	`{"c":[{"k":"create_room","create_room":{"room_id":"!x:a","events":[{"type":"m.room.create","room_id":"!x:a","content":{}}]}}]}`,
	`{"c":[{"k":"remote_room","remote_room":{"room_id":"!x:a","events":[null]}}]}`,
	`{"c":[{"k":"remote_room","remote_room":{"room_id":"!x:a","events":[{"type":"m.room.create","room_id":"!x:a","event_id":"$1","content":{}},{"room_id":"!z:a","event_id":"$2"}]}}]}`,
	`{"c":[{"k":"remote_room","remote_room":{"room_id":"","events":[{"type":"m.room.create","room_id":"","event_id":"$1","content":{}}]}}]}`,
	`{"c":[{"k":"event","event":{"event":{"room_id":"!pub:acme.test","sender":"@alice:acme.test","type":"m.room.message","content":{}}}}]}`,
	`{"c":[{"k":"event","event":{"txn_id":"new","event":{"room_id":"!pub:acme.test","sender":"@alice:acme.test","type":"m.room.message","content":{}}}}]}`,
	`{"c":[{"k":"bridge","bridge":{"bridge":"irc","txn_id":"b9","user_id":"@irc_erin:acme.test","events":[{"room_id":"!pub:acme.test","sender":"@irc_erin:acme.test","type":"m.room.message","content":{}}]}}]}`,
	`{"c":[{"k":"fed_cursor","fed_cursor":{"destination":"","pos":5}}]}`,
	// A null command panicked on a nil pointer (TestANullCommandIsRefused); a room id with a
	// NUL was stored, and its members read back from a snapshot as another room's
	// (TestARoomIDWithANULIsRefused).
	`{"c":[null]}`,
	`{"c":[{"k":"create_room","create_room":{"room_id":"!x\u0000y:a","events":[{"type":"m.room.create","room_id":"!x\u0000y:a","event_id":"$1","content":{}}]}}]}`,
	`{"c":[{"k":"remote_room","remote_room":{"room_id":"!x\u0000y:a","events":[{"type":"m.room.create","room_id":"!x\u0000y:a","event_id":"$1","content":{}}]}}]}`,
}

// TestUnstorableCommandsAreRefused: commands that cannot be stored are refused, and change
// nothing (the applied index aside).
func TestUnstorableCommandsAreRefused(t *testing.T) {
	base := newFuzzBase(t)
	snap := snapshotOf(t, base.store)
	for _, in := range unstorableCommands {
		b, err := DecodeBatch([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		s := restored(t, snap)
		before := dumpState(t, s, false)
		res, _, err := s.ApplyEntries([]Entry{{Index: s.AppliedIndex() + 1, Batch: b}})
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if r := res[0][0]; r.Code != CodeInvalid {
			t.Errorf("%s: %+v, want %s", in, r, CodeInvalid)
		}
		if d := diffState(before, dumpState(t, s, false)); d != "" {
			t.Errorf("%s changed the state:\n%s", in, d)
		}
		checkCaches(t, s)
	}
	// A repeated send is answered from its txn id before its event is looked at, as before.
	s := restored(t, snap)
	e := base.msg.Clone()
	e.EventID = ""
	res, _, err := s.ApplyEntries([]Entry{{Index: s.AppliedIndex() + 1, Batch: &Batch{Commands: []*Command{ev(e, "t1")}}}})
	if err != nil || !res[0][0].OK() || res[0][0].EventID != base.msg.EventID {
		t.Fatalf("repeated send: %+v %v", res, err)
	}
}

// FuzzParseStreamValue: any stream value parses, and what it parses to writes back to the
// same bytes (roomID [NUL org]*, as appendJoinedOrgs writes it).
func FuzzParseStreamValue(f *testing.F) {
	base := newFuzzBase(f)
	_ = base.store.view(func(tx *kv.Tx) error {
		return tx.Bucket(bucketStream).ForEach(func(_, v []byte) error {
			f.Add(bytes.Clone(v))
			return nil
		})
	})
	for _, s := range []string{"", "\x00", "!r:a\x00", "!r:a\x00\x00", "!r:a\x00a\x00\x00b", "\x00\x00\x00", "!r:a"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		roomID, orgs, recorded := parseStreamValue(v)
		if strings.IndexByte(roomID, 0) >= 0 {
			t.Fatalf("room id %q holds a NUL", roomID)
		}
		if recorded != bytes.Contains(v, []byte{0}) {
			t.Fatalf("recorded %v for %q", recorded, v)
		}
		back := []byte(roomID)
		if recorded {
			back = append(append(back, 0), strings.Join(orgs, "\x00")...)
		}
		if !bytes.Equal(back, v) {
			t.Fatalf("%q parsed to %q %q %v, which writes %q", v, roomID, orgs, recorded, back)
		}
		if orgs != nil && !recorded {
			t.Fatalf("orgs %q without a record", orgs)
		}
	})
}

// FuzzStreamValueWriter: what appendJoinedOrgs writes for a room's joined members (valid ids:
// the org after the first colon is never empty and holds no NUL, as the id grammars require)
// parses back to the room and its members' orgs, each once and in order.
func FuzzStreamValueWriter(f *testing.F) {
	f.Add("!pub:acme.test", fzAlice+"\n"+fzBob+"\n"+fzCarol)
	f.Add("!r:a", "@a:x\n@b:y:8448\n@c:x\nnocolon")
	f.Add("!r:a", "")
	f.Fuzz(func(t *testing.T, roomID, users string) {
		if strings.IndexByte(roomID, 0) >= 0 {
			return
		}
		joined := slices.Compact(slices.Sorted(slices.Values(strings.Split(users, "\n"))))
		want := []string{}
		for _, u := range joined {
			i := strings.IndexByte(u, ':')
			if i < 0 {
				continue
			}
			if org := u[i+1:]; org == "" || strings.IndexByte(org, 0) >= 0 {
				return // not a valid user id
			} else if !slices.Contains(want, org) {
				want = append(want, org)
			}
		}
		sort.Strings(want)
		a := &applier{overlay: map[string][]string{roomID: joined}}
		for range 2 { // the second time from the applier's cache
			gotRoom, orgs, recorded := parseStreamValue(a.appendJoinedOrgs([]byte(roomID), roomID))
			if orgs == nil {
				orgs = []string{}
			}
			if gotRoom != roomID || !recorded || !slices.Equal(orgs, want) {
				t.Fatalf("joined %q: read back %q %q %v, want %q %q", joined, gotRoom, orgs, recorded, roomID, want)
			}
		}
	})
}

// boltFileOf writes s's buckets into a bbolt database file, as snapshots were before the state
// moved to memory.
func boltFileOf(tb testing.TB, s *Store) []byte {
	tb.Helper()
	db, err := bolt.Open(tb.TempDir()+"/state.db", 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	state := dumpState(tb, s, true)
	err = db.Update(func(tx *bolt.Tx) error {
		for _, k := range slices.Sorted(maps.Keys(state)) {
			name, key, _ := strings.Cut(k, "\x00")
			b, err := tx.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				return err
			}
			if err := b.Put([]byte(key), []byte(state[k])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	var file bytes.Buffer
	if err := db.View(func(tx *bolt.Tx) error { _, err := tx.WriteTo(&file); return err }); err != nil {
		tb.Fatal(err)
	}
	return file.Bytes()
}

// serveEverything calls every read on s for its rooms and users, as a node serves them.
func serveEverything(s *Store) {
	s.rooms.mu.RLock()
	rooms := slices.Collect(maps.Keys(s.rooms.rooms))
	s.rooms.mu.RUnlock()
	sort.Strings(rooms)
	var users, tokens []string
	_ = s.view(func(tx *kv.Tx) error {
		_ = tx.Bucket(bucketUsers).ForEach(func(k, _ []byte) error { users = append(users, string(k)); return nil })
		_ = tx.Bucket(bucketTokens).ForEach(func(k, _ []byte) error { tokens = append(tokens, string(k)); return nil })
		return nil
	})
	s.AppliedIndex()
	s.StreamPos()
	s.Size()
	s.SigningKey()
	s.BridgeCursor()
	s.FedCursor("globex.test")
	s.BridgeTxn("irc", "b1")
	s.BridgeClaim("irc", "b5")
	s.VirtualUser(fzErin)
	s.RoomByAlias("#pub:acme.test")
	s.TxnEvent(fzAlice, "t1")
	for _, tok := range tokens[:min(len(tokens), 8)] {
		s.UserByToken(tok)
	}
	for _, room := range rooms[:min(len(rooms), 8)] {
		s.Room(room)
		s.Joined(room)
		s.JoinedOrgs(room, "acme.test")
		_, _ = s.Members(room)
		_, _ = s.RoomState(room)
		_, _ = s.RecentEvents(room, 5)
		_, _, _ = s.History(room, 3, 5)
		s.Membership(room, fzAlice)
	}
	for _, u := range users[:min(len(users), 8)] {
		s.Account(u)
		_, _ = s.UserRooms(u)
		_, _ = s.Sync(u, 0, 5)
		_, _ = s.Sync(u, 2, 5)
	}
	var ids []string
	_ = s.StreamAfterOrgs(0, 50, func(e *event.Event, _ []string, _ bool) bool {
		ids = append(ids, e.EventID)
		return true
	})
	for pos := int64(0); pos < 12; pos++ {
		s.JoinedOrgsAt(pos)
	}
	for _, id := range ids {
		s.Event(id)
	}
}

// FuzzRestore restores damaged and hostile snapshots (the current format and bbolt files) over
// a store holding fuzzBase. Restore never panics. When it refuses, nothing changed: the state,
// the caches, what is served. When it accepts, the caches agree with the database, every read
// serves without panicking, applying goes on, and the state snapshots to a fixed point:
// restoring its snapshot gives the same state and the same snapshot again.
//
// With fixCRC, the input is a snapshot without its end record, which the test appends with the
// right checksum: that lets the fuzzer reach past kv's checksum into what the state makes of
// the contents.
func FuzzRestore(f *testing.F) {
	base := newFuzzBase(f)
	snap := snapshotOf(f, base.store)
	current := newFuzzBase(f)
	(&fsmT{t: f, s: current.store, index: current.store.AppliedIndex()}).apply(ev(text(current.pub, fzBob, "only in the current state"), "c1"))
	currentSnap := snapshotOf(f, current.store)
	body := snap[:len(snap)-5]
	f.Add(snap, false)
	f.Add(body, true)
	f.Add(snapshotOf(f, Open()), false)
	f.Add([]byte(kv.Magic), true)
	f.Add(boltFileOf(f, base.store), false)
	f.Add(boltFileOf(f, Open()), false)
	f.Add(snap[:len(snap)/2], false)
	f.Add(append(make([]byte, 16), 0xED, 0xDA, 0x0C, 0xED, 1, 2, 3), false)
	// A page claiming 5,000,000 overflow pages under a forged high-water mark: the old check
	// allocated for each before finding them past the end of the file.
	f.Add(hugeOverflowBoltFile(f, boltFileOf(f, base.store), 5_000_000), false)
	// Bucket contents the state cannot load: a room and a member record that are not JSON.
	for _, bad := range []string{"rooms", "members"} {
		b := append([]byte(kv.Magic), 'B', byte(len(bad)))
		b = append(append(b, bad...), 1, 3)
		f.Add(append(append(b, "a\x00b"...), 2, '{', '}'), true)
		f.Add(append(append(b, "a\x00b"...), 1, '['), true)
	}
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	f.Fuzz(func(t *testing.T, data []byte, fixCRC bool) {
		in := data
		if fixCRC {
			if !bytes.HasPrefix(data, []byte(kv.Magic)) {
				return
			}
			in = binary.BigEndian.AppendUint32(append(bytes.Clone(data), 'E'), crc32.Checksum(append(bytes.Clone(data), 'E'), castagnoli))
		}
		s := restored(t, currentSnap)
		before, caches := dumpState(t, s, true), cacheState(s.rooms, s.members)
		if err := s.Restore(bytes.NewReader(in)); err != nil {
			if d := diffState(before, dumpState(t, s, true)); d != "" {
				t.Fatalf("a refused restore (%v) changed the state:\n%s", err, d)
			}
			if d := diffState(caches, cacheState(s.rooms, s.members)); d != "" {
				t.Fatalf("a refused restore (%v) changed the caches:\n%s", err, d)
			}
			return
		}
		checkCaches(t, s)
		serveEverything(s)
		state := dumpState(t, s, true)
		snap1 := snapshotOf(t, s)
		s2 := restored(t, snap1)
		if d := diffState(state, dumpState(t, s2, true)); d != "" {
			t.Fatalf("restoring the restored state's snapshot changed it:\n%s", d)
		}
		if snap2 := snapshotOf(t, s2); !bytes.Equal(snap1, snap2) {
			t.Fatal("the snapshot of a restored snapshot differs")
		}
		// Applying goes on from the restored state (what it decides is the state's business).
		c := &chain{t: t, room: base.pub.room, last: base.msg.EventID, depth: 50, ts: 50}
		_, _, _ = s.ApplyEntries([]Entry{{Index: s.AppliedIndex() + 1, Batch: &Batch{Commands: []*Command{
			ev(text(c, fzAlice, "after a restore"), "r1"), ev(member(c, fzBob, fzBob, Join), ""),
		}}}})
	})
}

// The seeds of the fuzz targets hold what they promise on the state they were made for.
func TestFuzzSeedsApply(t *testing.T) {
	base := newFuzzBase(t)
	if rooms, _ := base.store.UserRooms(fzAlice); len(rooms) != 3 {
		t.Fatalf("alice's rooms: %+v", rooms)
	}
	if orgs, recorded := base.store.JoinedOrgsAt(base.store.StreamPos()); !recorded || !slices.Equal(orgs, []string{"acme.test", "globex.test"}) {
		t.Fatalf("orgs of the last event: %q %v", orgs, recorded)
	}
	var ok, refused int
	for _, cmds := range base.applySeeds(t) {
		s := restored(t, snapshotOf(t, base.store))
		res, _, err := s.ApplyEntries([]Entry{{Index: s.AppliedIndex() + 1, Batch: &Batch{Commands: cmds}}})
		if err != nil {
			t.Fatalf("%s: %v", mustJSON(t, cmds), err)
		}
		for _, r := range res[0] {
			if r.OK() {
				ok++
			} else {
				refused++
			}
		}
	}
	if ok < 20 || refused < 10 {
		t.Fatalf("%d commands applied and %d refused: the seeds no longer reach both", ok, refused)
	}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
