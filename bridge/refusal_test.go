package bridge

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/bridge/internal/bridgetest"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// A command published by a broker user that is no bridge's amqp_user (RabbitMQ vouches for
// the user_id, the node knows no bridge by it) is refused M_FORBIDDEN naming that user,
// dead-lettered with its original user_id kept in a header, and has no effect.
func TestStrayUserIDRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	stray := "stray-" + bridgetest.RandHex(4)
	c, w, r := bridgePermissions(stray, org)
	pass := bridgetest.AddUser(t, e.vhost, stray, c, w, r)
	conn, err := amqp091.DialConfig(e.vhost.URLFor(stray, pass), amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(cmd("s1", "@irc_bob:"+org, "from a stranger"))
	ctx := ctxT(t, 10*time.Second)
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", CommandQueue(org), true, false, amqp091.Publishing{
		ContentType: "application/json", DeliveryMode: amqp091.Persistent, UserId: stray, MessageId: "stray", Body: raw})
	if err != nil {
		t.Fatal(err)
	}
	if ack, err := dc.WaitContext(ctx); err != nil || !ack {
		t.Fatalf("publish as %s: ack %v, err %v", stray, ack, err)
	}
	e.publish(e.user, "good", cmd("good", "@irc_bob:"+org, "still flowing"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "still flowing" })

	d := e.deadLetters(1)[0]
	if d.MessageId != "stray" || string(d.Body) != string(raw) {
		t.Fatalf("dead letter %q: %s", d.MessageId, d.Body)
	}
	want := `M_FORBIDDEN: user_id "` + stray + `" is no bridge's amqp_user`
	if got := d.Headers[amqp.HeaderError]; got != want {
		t.Errorf("x-parley-error %q, want %q", got, want)
	}
	if got := d.Headers[amqp.HeaderOriginalUserID]; got != stray {
		t.Errorf("%s = %v, want %q", amqp.HeaderOriginalUserID, got, stray)
	}
	if b := e.bodies(e.lobby); len(b) != 1 || b["still flowing"] != 1 {
		t.Errorf("lobby bodies %v", b)
	}
	e.expectNoDeadLetters()
}

// A configured alias that no room has yet: M_NOT_FOUND, dead-lettered; once a room takes the
// alias, the same command (a new txn_id) is applied.
func TestConfiguredAliasNotYetCreated(t *testing.T) {
	t.Parallel()
	later := "#later:" + org
	e := newEnv(t, withIRCRooms(later))
	bob := "@irc_bob:" + org
	early := cmd("a1", bob, "too early")
	early["room"] = later
	e.publish(e.user, "early", early)
	e.publish(e.user, "good", cmd("good", bob, "still flowing"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "still flowing" })

	d := e.deadLetters(1)[0]
	want := "M_NOT_FOUND: no room has the alias " + later
	if got := d.Headers[amqp.HeaderError]; d.MessageId != "early" || got != want {
		t.Fatalf("dead letter %q: x-parley-error %q, want %q", d.MessageId, got, want)
	}
	if _, ok := e.nodes[0].Srv.Cluster().Store().BridgeTxn("irc", "a1"); ok {
		t.Error("the refused command was recorded")
	}

	room := e.createRoom(map[string]any{"alias": "later", "visibility": "public"})
	ontime := cmd("a2", bob, "on time")
	ontime["room"] = later
	e.publish(e.user, "ontime", ontime)
	msg := nextEvent(t, e.alice, room, "m.room.message", nil)
	if msg["sender"] != bob || body(msg) != "on time" {
		t.Fatalf("message %v", msg)
	}
	e.expectNoDeadLetters()
}

// A virtual user invited into a room of another org that this org knows only through the
// invite (a partial room), on a node without federation: its leave cannot be committed here
// alone (the home org would never hear of it and keep showing the invite), so it is refused as
// join and send are, with the same code and reason, dead-lettered, and nothing changes: the
// invite stands here as at the home org. With federation the home org is asked
// (TestBridgeInARoomOfAPeerOrg in cmd/parley).
func TestLeaveOfRemoteInviteRefused(t *testing.T) {
	t.Parallel()
	remote := "!r" + bridgetest.RandHex(6) + ":elsewhere.test"
	e := newEnv(t, withIRCRooms(remote))
	bob := "@irc_bob:" + org
	e.publish(e.user, "create-bob", cmd("c1", bob, "creates bob"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "creates bob" })

	// The invite as the federation inbox commits it, the home org having authorized it.
	store := e.nodes[0].Srv.Cluster().Store()
	invite := &event.Event{RoomID: remote, Sender: "@carol:elsewhere.test", Origin: "elsewhere.test",
		OriginTS: time.Now().UnixMilli(), Type: "m.room.member", StateKey: &bob,
		Content: json.RawMessage(`{"membership":"invite"}`), PrevEvents: []string{"$" + bridgetest.RandHex(16)}, Depth: 5}
	if err := event.Seal(invite); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := e.nodes[0].Srv.Cluster().Propose(pctx, &state.Command{Kind: state.KindEvent,
		Event: &state.EventCommand{Event: invite, InviteRoom: true}})
	if err != nil || !res.OK() {
		t.Fatalf("remote invite: %+v %v", res, err)
	}
	if r, ok := store.Room(remote); !ok || !r.Partial {
		t.Fatalf("room after the invite: %+v %v", r, ok)
	}

	in := func(txn, op string) map[string]any {
		c := cmd(txn, bob, "in the remote room")
		c["op"], c["room"] = op, remote
		if op != OpSend {
			delete(c, "content")
		}
		return c
	}
	ops := []string{OpLeave, OpJoin, OpSend}
	for _, op := range ops {
		e.publish(e.user, op, in("x-"+op, op))
	}
	e.publish(e.user, "good", cmd("good", bob, "still flowing"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "still flowing" })

	got := map[string]amqp091.Delivery{}
	for _, d := range e.deadLetters(len(ops)) {
		got[d.MessageId] = d
	}
	want := "M_FORBIDDEN: bridges join and leave only rooms of " + org + " and of its federation peers"
	for _, op := range ops {
		d, ok := got[op]
		if !ok {
			t.Errorf("%s: not dead-lettered", op)
			continue
		}
		if reason := d.Headers[amqp.HeaderError]; reason != want {
			t.Errorf("%s: x-parley-error %q, want %q", op, reason, want)
		}
		if _, ok := store.BridgeTxn("irc", "x-"+op); ok {
			t.Errorf("%s: the refused command was recorded", op)
		}
	}
	if m := store.Membership(remote, bob).Membership; m != state.Invite {
		t.Errorf("bob is %q in the remote room, want still invited", m)
	}
	evs, _, err := store.History(remote, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if ev.EventID != invite.EventID {
			t.Errorf("an event besides the invite in the remote room: %s %s %s", ev.Type, ev.Sender, ev.Content)
		}
	}
	e.expectNoDeadLetters()
}

// A new virtual user's first send into a room where only moderators speak (power levels: 50
// for m.room.message) is refused M_FORBIDDEN by the state machine and changes nothing: the join
// that came with it in one command is not stored, the virtual user is not created, the txn_id
// is not recorded. Once the room lets everyone speak, the same command (the same txn_id) is
// applied: the join and the message.
func TestRefusedFirstSendChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice := "@alice:" + org
	levels := func(message int) {
		t.Helper()
		if _, err := e.alice.Request(ctxT(t, 10*time.Second), map[string]any{"op": "set_state", "room_id": e.lobby,
			"type": "m.room.power_levels", "content": map[string]any{"users": map[string]any{alice: 100},
				"events": map[string]any{"m.room.message": message}}}); err != nil {
			t.Fatal(err)
		}
	}
	levels(50)
	store := e.nodes[0].Srv.Cluster().Store()
	pos := store.StreamPos()
	newbie := "@irc_newbie:" + org
	e.publish(e.user, "first", cmd("f1", newbie, "not allowed to speak"))

	d := e.deadLetters(1)[0]
	want := "M_FORBIDDEN: m.room.message needs power 50"
	if got := d.Headers[amqp.HeaderError]; d.MessageId != "first" || got != want {
		t.Fatalf("dead letter %q: x-parley-error %q, want %q", d.MessageId, got, want)
	}
	if m := store.Membership(e.lobby, newbie); m.Membership != "" {
		t.Errorf("the refused send left a membership: %+v", m)
	}
	if _, ok := store.Account(newbie); ok {
		t.Error("the refused send created the virtual user")
	}
	if _, ok := store.BridgeTxn("irc", "f1"); ok {
		t.Error("the refused send was recorded")
	}
	if p := store.StreamPos(); p != pos {
		t.Errorf("the stream moved from %d to %d", pos, p)
	}
	for _, ev := range e.history(e.lobby) {
		if ev["sender"] == newbie {
			t.Errorf("an event of the refused send is in the room: %v", ev)
		}
	}

	levels(0)
	e.publish(e.user, "again", cmd("f1", newbie, "not allowed to speak"))
	msg := nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return ev["sender"] == newbie })
	if body(msg) != "not allowed to speak" {
		t.Fatalf("message %v", msg)
	}
	if m := store.Membership(e.lobby, newbie).Membership; m != state.Join {
		t.Errorf("newbie is %q after the permitted send", m)
	}
	if b, ok := store.VirtualUser(newbie); !ok || b != "irc" {
		t.Errorf("VirtualUser = %q %v", b, ok)
	}
	if r, ok := store.BridgeTxn("irc", "f1"); !ok || r.EventID != msg["event_id"] {
		t.Errorf("BridgeTxn = %+v %v", r, ok)
	}
	e.expectNoDeadLetters()
}
