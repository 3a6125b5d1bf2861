package state

import (
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// chain builds sealed events of one room, each on top of the previous one.
type chain struct {
	t     testing.TB
	room  string
	last  string
	depth int64
	ts    int64
}

func (c *chain) next(sender, typ string, stateKey *string, content any) *event.Event {
	c.t.Helper()
	raw, err := event.CanonicalValue(content)
	if err != nil {
		c.t.Fatal(err)
	}
	c.depth++
	c.ts++
	e := &event.Event{RoomID: c.room, Sender: sender, Origin: "acme.test", OriginTS: c.ts, Type: typ, StateKey: stateKey,
		Content: raw, PrevEvents: []string{}, Depth: c.depth}
	if c.last != "" {
		e.PrevEvents = []string{c.last}
	}
	if err := event.Seal(e); err != nil {
		c.t.Fatal(err)
	}
	c.last = e.EventID
	return e
}

func sk(s string) *string { return &s }

type fsmT struct {
	t     testing.TB
	s     *Store
	index uint64
}

func (f *fsmT) apply(cmds ...*Command) []Result {
	f.t.Helper()
	f.index++
	res, _, err := f.s.ApplyEntries([]Entry{{Index: f.index, Batch: &Batch{Commands: cmds}}})
	if err != nil {
		f.t.Fatal(err)
	}
	return res[0]
}

func TestBridgeCommandAppliedOnce(t *testing.T) {
	s := Open()
	defer s.Close()
	f := &fsmT{t: t, s: s}
	const alice, bob = "@alice:acme.test", "@irc_bob:acme.test"
	room := &chain{t: t, room: "!r:acme.test"}
	create := []*event.Event{
		room.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public"}),
		room.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
	}
	f.apply(&Command{Kind: KindRegister, Register: &Register{UserID: alice, PasswordHash: []byte("h"), TokenHash: "t"}},
		&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: create}})

	join := room.next(bob, "m.room.member", sk(bob), map[string]string{"membership": Join})
	msg := room.next(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hi"})
	cmd := &Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "t1", UserID: bob, CreatedTS: 5,
		Events: []*event.Event{join, msg}}}
	first := f.apply(cmd)[0]
	if !first.OK() || first.EventID != msg.EventID || first.StreamPos != 4 {
		t.Fatalf("first apply: %+v", first)
	}
	if acc, ok := s.Account(bob); !ok || len(acc.PasswordHash) != 0 || acc.CreatedTS != 5 {
		t.Fatalf("virtual account %+v %v", acc, ok)
	}
	if b, ok := s.VirtualUser(bob); !ok || b != "irc" {
		t.Fatalf("VirtualUser = %q %v", b, ok)
	}
	if s.Membership(room.room, bob).Membership != Join {
		t.Fatal("bob did not join")
	}
	// The same (bridge, txn_id) again, with other events: the first outcome, nothing stored.
	other := room.next(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "again"})
	again := f.apply(&Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "t1", UserID: bob,
		Events: []*event.Event{other}}})[0]
	if again.EventID != msg.EventID || again.StreamPos != 4 || s.StreamPos() != 4 {
		t.Fatalf("repeat: %+v, stream at %d", again, s.StreamPos())
	}
	if r, ok := s.BridgeTxn("irc", "t1"); !ok || r.EventID != msg.EventID {
		t.Fatalf("BridgeTxn = %+v %v", r, ok)
	}
	// Another bridge's same txn_id is its own; a command without events is recorded too.
	if r := f.apply(&Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "other", TxnID: "t1", UserID: bob}})[0]; !r.OK() {
		t.Fatalf("other bridge: %+v", r)
	}
	if _, ok := s.BridgeTxn("other", "t1"); !ok {
		t.Fatal("a command without events was not recorded")
	}
	// A registered account is never acted for; a refusal records nothing.
	r := f.apply(&Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "t2", UserID: alice,
		Events: []*event.Event{room.next(alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "x"})}}})[0]
	if r.Code != CodeForbidden {
		t.Fatalf("acting for a registered account: %+v", r)
	}
	if _, ok := s.BridgeTxn("irc", "t2"); ok {
		t.Fatal("a refused command was recorded")
	}
	// Room rules apply: a private room needs an invite.
	priv := &chain{t: t, room: "!p:acme.test"}
	f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: priv.room, Events: []*event.Event{
		priv.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "private"}),
		priv.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
	}}})
	r = f.apply(&Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "t3", UserID: bob,
		Events: []*event.Event{priv.next(bob, "m.room.member", sk(bob), map[string]string{"membership": Join})}}})[0]
	if r.Code != CodeForbidden {
		t.Fatalf("joining a private room: %+v", r)
	}
	// Events must be the user's own.
	r = f.apply(&Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "t4", UserID: bob,
		Events: []*event.Event{room.next(alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "x"})}}})[0]
	if r.Code != CodeInvalid {
		t.Fatalf("someone else's event: %+v", r)
	}
	if r := f.apply(&Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", UserID: bob}})[0]; r.Code != CodeInvalid {
		t.Fatalf("no txn_id: %+v", r)
	}
}

func TestBridgeCursorMovesForward(t *testing.T) {
	s := Open()
	defer s.Close()
	f := &fsmT{t: t, s: s}
	for _, pos := range []int64{5, 3, 9, 0} {
		f.apply(&Command{Kind: KindBridgeCursor, BridgeCursor: &BridgeCursor{Pos: pos}})
	}
	if got := s.BridgeCursor(); got != 9 {
		t.Fatalf("cursor %d, want 9", got)
	}
	// The commands survive the log's JSON encoding.
	b, err := EncodeBatch([]*Command{{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "x", UserID: "@u:a"}}})
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeBatch(b)
	if err != nil || back.Commands[0].Bridge == nil || back.Commands[0].Bridge.TxnID != "x" {
		t.Fatalf("round trip: %v %s", err, b)
	}
}

// TestRefusedBridgeCommandChangesNothing: a bridge command refused by the room's rules changes
// nothing, even when an earlier event of it (the join before a virtual user's first send) was
// allowed: not the membership, not the virtual user's account, not the stream, no txn record,
// nothing pushed. The command applies whole once the room allows it.
func TestRefusedBridgeCommandChangesNothing(t *testing.T) {
	s := Open()
	defer s.Close()
	f := &fsmT{t: t, s: s}
	const alice, bob = "@alice:acme.test", "@irc_bob:acme.test"
	room := &chain{t: t, room: "!news:acme.test"}
	announce := DefaultPowerLevels(alice)
	announce.Events = map[string]int64{"m.room.message": 50}
	for _, r := range f.apply(&Command{Kind: KindRegister, Register: &Register{UserID: alice, PasswordHash: []byte("h"), TokenHash: "t"}},
		&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: []*event.Event{
			room.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public"}),
			room.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
			room.next(alice, "m.room.power_levels", sk(""), announce),
		}}}) {
		if !r.OK() {
			t.Fatalf("setup: %+v", r)
		}
	}

	// Bob's first send: a join (allowed: the room is public) and a message (refused), in one
	// entry between two of alice's messages, which stay.
	join := room.next(bob, "m.room.member", sk(bob), map[string]string{"membership": Join})
	msg := room.next(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hi"})
	send := &Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "t1", UserID: bob, CreatedTS: 5,
		Events: []*event.Event{join, msg}}}
	before, cachesBefore, pos := dumpState(t, s, false), cacheState(s.rooms, s.members), s.StreamPos()
	f.index++
	res, applied, err := s.ApplyEntries([]Entry{{Index: f.index, Batch: &Batch{Commands: []*Command{send}}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0][0]; r.Code != CodeForbidden || r.Message != "m.room.message needs power 50" || r.Index != f.index {
		t.Fatalf("refused send: %+v", r)
	}
	if d := diffState(before, dumpState(t, s, false)); d != "" {
		t.Fatalf("the refused command changed the state:\n%s", d)
	}
	if d := diffState(cachesBefore, cacheState(s.rooms, s.members)); d != "" {
		t.Fatalf("the refused command changed the caches:\n%s", d)
	}
	if m := s.Membership(room.room, bob); m.Membership != "" {
		t.Fatalf("bob's membership after the refused send: %+v", m)
	}
	if _, ok := s.Account(bob); ok {
		t.Fatal("the refused command created the virtual user's account")
	}
	if _, ok := s.VirtualUser(bob); ok {
		t.Fatal("the refused command made bob a virtual user")
	}
	if _, ok := s.BridgeTxn("irc", "t1"); ok {
		t.Fatal("the refused command was recorded")
	}
	if _, ok := s.Event(join.EventID); ok {
		t.Fatal("the join of the refused command is stored")
	}
	if s.StreamPos() != pos || len(applied.Events) != 0 || len(applied.pendingMembers()) != 0 {
		t.Fatalf("stream at %d (was %d), %d events and %d membership changes to push", s.StreamPos(), pos,
			len(applied.Events), len(applied.pendingMembers()))
	}
	checkCaches(t, s)

	// The same refusal among other commands of the entry: they apply, it changes nothing.
	before1 := room.next(alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "before"})
	after1 := room.next(alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "after"})
	f.index++
	res, applied, err = s.ApplyEntries([]Entry{
		{Index: f.index, Batch: &Batch{Commands: []*Command{{Kind: KindEvent, Event: &EventCommand{Event: before1, TxnID: "a1"}}, send}}},
		{Index: f.index + 1, Batch: &Batch{Commands: []*Command{{Kind: KindEvent, Event: &EventCommand{Event: after1, TxnID: "a2"}}}}},
	})
	f.index++
	if err != nil {
		t.Fatal(err)
	}
	if !res[0][0].OK() || res[0][0].StreamPos != pos+1 || res[0][1].Code != CodeForbidden || res[0][1].Index != f.index-1 ||
		!res[1][0].OK() || res[1][0].StreamPos != pos+2 || res[1][0].Index != f.index {
		t.Fatalf("results %+v", res)
	}
	if len(applied.Events) != 2 || applied.Events[0].Event.EventID != before1.EventID || applied.Events[1].Event.EventID != after1.EventID {
		t.Fatalf("pushed %+v", applied.Events)
	}
	if s.Membership(room.room, bob).Membership != "" || s.StreamPos() != pos+2 {
		t.Fatalf("bob is %q, stream at %d", s.Membership(room.room, bob).Membership, s.StreamPos())
	}
	if _, ok := s.Account(bob); ok {
		t.Fatal("the refused command created the virtual user's account")
	}
	checkCaches(t, s)

	// A join refused at once (a private room) creates no account either.
	priv := &chain{t: t, room: "!priv:acme.test"}
	f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: priv.room, Events: []*event.Event{
		priv.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "private"}),
		priv.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
	}}})
	r := f.apply(&Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "t2", UserID: bob,
		Events: []*event.Event{priv.next(bob, "m.room.member", sk(bob), map[string]string{"membership": Join})}}})[0]
	if r.Code != CodeForbidden {
		t.Fatalf("joining a private room: %+v", r)
	}
	if _, ok := s.Account(bob); ok {
		t.Fatal("a refused join created the virtual user's account")
	}

	// Once the room lets everyone speak, the same command (its txn_id was not recorded) applies
	// whole, on top of the room's new head.
	open := DefaultPowerLevels(alice)
	if r := f.apply(&Command{Kind: KindEvent, Event: &EventCommand{Event: room.next(alice, "m.room.power_levels", sk(""), open)}})[0]; !r.OK() {
		t.Fatalf("opening the room: %+v", r)
	}
	pos = s.StreamPos()
	join = room.next(bob, "m.room.member", sk(bob), map[string]string{"membership": Join})
	msg = room.next(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hi"})
	send.Bridge.Events = []*event.Event{join, msg}
	f.index++
	res, applied, err = s.ApplyEntries([]Entry{{Index: f.index, Batch: &Batch{Commands: []*Command{send}}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0][0]; !r.OK() || r.EventID != msg.EventID || r.StreamPos != pos+2 {
		t.Fatalf("permitted send: %+v", r)
	}
	if s.Membership(room.room, bob).Membership != Join || s.StreamPos() != pos+2 || len(applied.Events) != 2 {
		t.Fatalf("bob is %q, stream at %d, %d events pushed", s.Membership(room.room, bob).Membership, s.StreamPos(), len(applied.Events))
	}
	if acc, ok := s.Account(bob); !ok || acc.CreatedTS != 5 {
		t.Fatalf("virtual account %+v %v", acc, ok)
	}
	if b, ok := s.VirtualUser(bob); !ok || b != "irc" {
		t.Fatalf("VirtualUser = %q %v", b, ok)
	}
	if r, ok := s.BridgeTxn("irc", "t1"); !ok || r.EventID != msg.EventID {
		t.Fatalf("BridgeTxn = %+v %v", r, ok)
	}
	checkCaches(t, s)
}

// TestBridgeClaim: the first claim of a (bridge, txn_id) is stored with the user's membership
// position at that point; another claim, or a claim of an applied txn_id, changes nothing; the
// bridge command of a claimed txn_id applies and replaces the claim with its outcome; a release
// with the claim's token removes it, any other not. Claims survive the log's encoding and a
// snapshot.
func TestBridgeClaim(t *testing.T) {
	s := Open()
	defer s.Close()
	f := &fsmT{t: t, s: s}
	const alice, bob = "@alice:acme.test", "@irc_bob:acme.test"
	room := &chain{t: t, room: "!r:acme.test"}
	f.apply(&Command{Kind: KindRegister, Register: &Register{UserID: alice, PasswordHash: []byte("h"), TokenHash: "t"}},
		&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: []*event.Event{
			room.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public"}),
			room.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
		}}})
	claim := func(txn, token string) *Command {
		return &Command{Kind: KindBridgeClaim, BridgeClaim: &BridgeClaim{Bridge: "irc", TxnID: txn, UserID: bob, RoomID: room.room, Claim: token}}
	}
	ok := func(rs []Result) {
		t.Helper()
		for _, r := range rs {
			if !r.OK() {
				t.Fatalf("refused: %+v", r)
			}
		}
	}

	// A claim before bob is in the room: no membership yet; a second claim does not replace it.
	ok(f.apply(claim("t1", "c1")))
	ok(f.apply(claim("t1", "c2")))
	if c, found := s.BridgeClaim("irc", "t1"); !found || c.Claim != "c1" || c.MemberPos != 0 || c.RoomID != room.room || c.UserID != bob {
		t.Fatalf("claim %+v %v", c, found)
	}
	if _, found := s.BridgeTxn("irc", "t1"); found {
		t.Fatal("a claimed txn_id reads as applied")
	}
	// The claimed txn_id's command applies (a claim is no record of an outcome) and replaces it.
	join := room.next(bob, "m.room.member", sk(bob), map[string]string{"membership": Join})
	cmd := &Command{Kind: KindBridge, Bridge: &BridgeCommand{Bridge: "irc", TxnID: "t1", UserID: bob, Events: []*event.Event{join}}}
	first := f.apply(cmd)[0]
	if !first.OK() || first.EventID != join.EventID || s.Membership(room.room, bob).Membership != Join {
		t.Fatalf("command over a claim: %+v", first)
	}
	if r, found := s.BridgeTxn("irc", "t1"); !found || r.EventID != join.EventID {
		t.Fatalf("BridgeTxn = %+v %v", r, found)
	}
	if _, found := s.BridgeClaim("irc", "t1"); found {
		t.Fatal("the claim outlived its command")
	}
	// Applied: a claim changes nothing, and the command stays applied once.
	ok(f.apply(claim("t1", "c3")))
	if _, found := s.BridgeClaim("irc", "t1"); found {
		t.Fatal("an applied txn_id was claimed")
	}
	if again := f.apply(cmd)[0]; again.EventID != join.EventID || s.StreamPos() != first.StreamPos {
		t.Fatalf("repeat: %+v, stream at %d", again, s.StreamPos())
	}

	// A claim records where bob's membership stands; a release needs the claim's token.
	ok(f.apply(claim("t2", "c4")))
	if c, _ := s.BridgeClaim("irc", "t2"); c.MemberPos != first.StreamPos {
		t.Fatalf("claim at member pos %d, want %d", c.MemberPos, first.StreamPos)
	}
	release := func(txn, token string) *Command {
		c := claim(txn, token)
		c.BridgeClaim.Release = true
		return c
	}
	ok(f.apply(release("t2", "other")))
	ok(f.apply(release("t1", "c1"))) // an applied txn_id is no claim to release
	if _, found := s.BridgeTxn("irc", "t1"); !found {
		t.Fatal("a release removed an applied txn_id")
	}
	if c, found := s.BridgeClaim("irc", "t2"); !found || c.Claim != "c4" {
		t.Fatalf("released with another token: %+v %v", c, found)
	}
	ok(f.apply(release("t2", "c4")))
	if _, found := s.BridgeClaim("irc", "t2"); found {
		t.Fatal("the claim was not released")
	}
	ok(f.apply(claim("t2", "c5")))
	if c, found := s.BridgeClaim("irc", "t2"); !found || c.Claim != "c5" {
		t.Fatalf("claim after release: %+v %v", c, found)
	}

	// A claim may carry the user's event (a leave declining an invite), kept with it.
	leave := room.next(bob, "m.room.member", sk(bob), map[string]string{"membership": Leave})
	withEvent := claim("t3", "c6")
	withEvent.BridgeClaim.Event = leave
	ok(f.apply(withEvent))
	if c, found := s.BridgeClaim("irc", "t3"); !found || c.Event == nil || c.Event.EventID != leave.EventID {
		t.Fatalf("claim with event: %+v %v", c, found)
	}

	// Malformed claims are refused and store nothing.
	for _, bad := range []*BridgeClaim{
		{TxnID: "x", UserID: bob, RoomID: room.room, Claim: "c"},
		{Bridge: "irc", UserID: bob, RoomID: room.room, Claim: "c"},
		{Bridge: "irc", TxnID: "x", RoomID: room.room, Claim: "c"},
		{Bridge: "irc", TxnID: "x", UserID: bob, Claim: "c"},
		{Bridge: "irc", TxnID: "x", UserID: bob, RoomID: room.room},
		{Bridge: "irc", TxnID: "x", UserID: bob, RoomID: room.room, Claim: "c", Event: room.next(alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "x"})},
	} {
		if r := f.apply(&Command{Kind: KindBridgeClaim, BridgeClaim: bad})[0]; r.Code != CodeInvalid {
			t.Fatalf("claim %+v: %+v", bad, r)
		}
	}
	if r := f.apply(&Command{Kind: KindBridgeClaim})[0]; r.Code != CodeInvalid {
		t.Fatalf("empty claim: %+v", r)
	}
	if _, found := s.BridgeClaim("irc", "x"); found {
		t.Fatal("a refused claim was stored")
	}

	// The log's encoding and a snapshot keep claims.
	b, err := EncodeBatch([]*Command{withEvent})
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeBatch(b)
	if err != nil || back.Commands[0].BridgeClaim == nil || back.Commands[0].BridgeClaim.Claim != "c6" ||
		back.Commands[0].BridgeClaim.Event.EventID != leave.EventID {
		t.Fatalf("round trip: %v %s", err, b)
	}
	r := restored(t, snapshotOf(t, s))
	defer r.Close()
	if c, found := r.BridgeClaim("irc", "t2"); !found || c.Claim != "c5" {
		t.Fatalf("restored claim %+v %v", c, found)
	}
	if res, found := r.BridgeTxn("irc", "t1"); !found || res.EventID != join.EventID {
		t.Fatalf("restored BridgeTxn %+v %v", res, found)
	}
}
