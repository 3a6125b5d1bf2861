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
