package bridge

import (
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/bridge/internal/bridgetest"
	"github.com/parley-chat/parley/node/client"
)

// A command from a bridge reaches the room's WebSocket clients: the virtual user is created,
// joins (a public room, named by alias) and speaks; join, typing and leave work too; nobody
// can log in as a virtual user.
func TestCommandReachesWebSocket(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.publish(e.user, "m1", cmd("t1", "@irc_bob:"+org, "hello from IRC"))
	join := nextEvent(t, e.alice, e.lobby, "m.room.member", func(ev map[string]any) bool { return ev["sender"] != "@alice:"+org })
	if join["sender"] != "@irc_bob:"+org || join["state_key"] != "@irc_bob:"+org {
		t.Fatalf("join %v", join)
	}
	msg := nextEvent(t, e.alice, e.lobby, "m.room.message", nil)
	if msg["sender"] != "@irc_bob:"+org || body(msg) != "hello from IRC" || msg["origin"] != org {
		t.Fatalf("message %v", msg)
	}
	if _, ok := msg["unsigned"]; ok {
		t.Errorf("a bridge's event carries unsigned: %v", msg)
	}
	if _, _, err := client.Login(ctxT(t, 10*time.Second), e.nodes[0].BaseURL(), "irc_bob", "any password at all"); err == nil {
		t.Error("logged in as a virtual user")
	}
	if _, _, err := client.Register(ctxT(t, 10*time.Second), e.nodes[0].BaseURL(), "irc_bob", "taken? yes"); err == nil {
		t.Error("registered over a virtual user")
	}

	// Explicit join (by room id), typing, a reaction, leave.
	joinCmd := cmd("t2", "@irc_carol:"+org, "")
	joinCmd["op"], joinCmd["room"] = OpJoin, e.lobby
	delete(joinCmd, "content")
	e.publish(e.user, "m2", joinCmd)
	nextEvent(t, e.alice, e.lobby, "m.room.member", func(ev map[string]any) bool { return ev["state_key"] == "@irc_carol:"+org })

	typing := cmd("t3", "@irc_carol:"+org, "")
	typing["op"], typing["content"] = OpTyping, map[string]any{"typing": true, "timeout_ms": 10000}
	e.publish(e.user, "m3", typing)
	waitTyping(t, e.alice, e.lobby, "@irc_carol:"+org)

	react := cmd("t4", "@irc_carol:"+org, "")
	react["event_type"] = "m.reaction"
	react["content"] = map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": msg["event_id"], "key": "👍"}}
	e.publish(e.user, "m4", react)
	nextEvent(t, e.alice, e.lobby, "m.reaction", func(ev map[string]any) bool { return ev["sender"] == "@irc_carol:"+org })

	leave := cmd("t5", "@irc_carol:"+org, "")
	leave["op"] = OpLeave
	delete(leave, "content")
	e.publish(e.user, "m5", leave)
	left := nextEvent(t, e.alice, e.lobby, "m.room.member", func(ev map[string]any) bool { return ev["state_key"] == "@irc_carol:"+org })
	if left["content"].(map[string]any)["membership"] != "leave" {
		t.Fatalf("leave event %v", left)
	}
	// A leave of someone not in the room is a no-op, acked, not refused.
	leave["txn_id"] = "t6"
	e.publish(e.user, "m6", leave)
	e.publish(e.user, "m7", cmd("t7", "@irc_bob:"+org, "after the no-op"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "after the no-op" })
	e.expectNoDeadLetters()
}

func waitTyping(t *testing.T, c *client.Conn, room, user string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case f := <-c.Pushes():
			if f["op"] != "typing" || f["room_id"] != room {
				continue
			}
			for _, u := range f["user_ids"].([]any) {
				if u == user {
					return
				}
			}
		case <-timeout:
			t.Fatalf("no typing push for %s", user)
		}
	}
}

func (e *env) expectNoDeadLetters() {
	e.t.Helper()
	ch, err := e.amqp.Channel()
	if err != nil {
		e.t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(DeadLetterQueue(org), true, false, false, false, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if q.Messages != 0 {
		d, _, _ := ch.Get(DeadLetterQueue(org), false)
		e.t.Fatalf("%d dead letters, first: %v %s", q.Messages, d.Headers[amqp.HeaderError], d.Body)
	}
}

// A message sent on a WebSocket reaches a bridge's queue bound on the events exchange, with
// the contract's routing key and body; rooms no bridge has stay out.
func TestWebSocketMessageReachesBridge(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	room := e.bindEvents(RoutingKey(e.lobby, "*"))
	all := e.bindEvents("#")
	ctx := ctxT(t, 10*time.Second)
	id, err := e.alice.Send(ctx, e.lobby, "ws-1", "hello bridges")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.alice.Send(ctx, e.other, "ws-2", "not bridged"); err != nil {
		t.Fatal(err)
	}
	d, ev := room.waitFor(t, "alice's message", func(d amqp091.Delivery, ev map[string]any) bool { return ev["event_id"] == id })
	if d.RoutingKey != RoutingKey(e.lobby, "m.room.message") || !strings.Contains(d.RoutingKey, "test_local.m_room_message") {
		t.Errorf("routing key %q", d.RoutingKey)
	}
	if d.MessageId != id || d.ContentType != "application/json" || d.DeliveryMode != amqp091.Persistent {
		t.Errorf("properties: message_id %q content_type %q mode %d", d.MessageId, d.ContentType, d.DeliveryMode)
	}
	if ev["sender"] != "@alice:"+org || body(ev) != "hello bridges" || ev["room_id"] != e.lobby || ev["stream_pos"] == nil ||
		ev["hashes"] == nil || ev["prev_events"] == nil {
		t.Errorf("event %s", d.Body)
	}
	// The org key signs events that leave the org (federation), not what stays inside it:
	// signatures are optional in the client protocol's EVENT (docs/federation.md, "Keys").
	if ev["signatures"] != nil {
		t.Errorf("an own event published with signatures: %s", d.Body)
	}
	if strings.Contains(string(d.Body), "ws-1") || strings.Contains(string(d.Body), "unsigned") {
		t.Errorf("txn_id published: %s", d.Body)
	}
	var last float64
	for _, d := range room.snapshot() {
		pos := wireEvent(t, d)["stream_pos"].(float64)
		if pos <= last {
			t.Fatalf("out of order: %v after %v", pos, last)
		}
		last = pos
	}
	// Give the not-bridged message time to show up if it were published.
	all.waitFor(t, "the marker", func(d amqp091.Delivery, ev map[string]any) bool { return ev["event_id"] == id })
	time.Sleep(300 * time.Millisecond)
	for _, d := range all.snapshot() {
		ev := wireEvent(t, d)
		if ev["room_id"] == e.other {
			t.Fatalf("event of a room no bridge has: %s", d.Body)
		}
	}
}

// The same (bridge, txn_id) is applied once, however often it comes and whatever it says the
// second time; join and leave are recorded too, so an old join redelivered after a leave does
// not join again; another bridge's same txn_id is its own.
func TestDuplicateTxnAppliedOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for i := range 3 {
		e.publish(e.user, fmt.Sprintf("d%d", i), cmd("dup", "@irc_bob:"+org, "once"))
	}
	e.publish(e.user, "d3", cmd("dup", "@irc_bob:"+org, "changed"))
	e.publish(e.user, "d4", cmd("dup", "@irc_dave:"+org, "other sender"))

	join := cmd("j1", "@irc_erin:"+org, "")
	join["op"] = OpJoin
	delete(join, "content")
	leave := cmd("l1", "@irc_erin:"+org, "")
	leave["op"] = OpLeave
	delete(leave, "content")
	e.publish(e.user, "j1", join)
	e.publish(e.user, "l1", leave)
	e.publish(e.user, "j1-again", join)
	e.publish(e.user, "end", cmd("end", "@irc_bob:"+org, "sentinel"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "sentinel" })

	got := e.bodies(e.lobby)
	if got["once"] != 1 || got["changed"] != 0 || got["other sender"] != 0 || got["sentinel"] != 1 {
		t.Fatalf("bodies %v", got)
	}
	members, err := e.alice.Request(ctxT(t, 10*time.Second), client.Frame{"op": "members", "room_id": e.lobby})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members["members"].([]any) {
		row := m.(map[string]any)
		if row["user_id"] == "@irc_erin:"+org && row["membership"] != "leave" {
			t.Fatalf("erin is %v after join, leave, join again", row["membership"])
		}
	}
	joins := 0
	for _, ev := range e.history(e.lobby) {
		if ev["type"] == "m.room.member" && ev["state_key"] == "@irc_erin:"+org {
			joins++
		}
	}
	if joins != 2 { // one join, one leave
		t.Fatalf("%d member events of erin, want 2", joins)
	}
	e.expectNoDeadLetters()
}

// Every refused command ends in the DLQ with the contract's x-parley-error code, none has an
// effect, and the queue goes on.
func TestRefusedCommandsAreDeadLettered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, _, err := client.Register(ctxT(t, 10*time.Second), e.nodes[0].BaseURL(), "irc_real", "a real password"); err != nil {
		t.Fatal(err)
	}
	bob := "@irc_bob:" + org
	with := func(m map[string]any, k string, v any) map[string]any {
		m[k] = v
		return m
	}
	big := strings.Repeat("x", 40<<10)
	type tc struct {
		id, user string
		body     any
		code     string
		reason   string
	}
	cases := []tc{
		{"wrong-user-id", e.user, with(cmd("r1", "@other_x:"+org, "x"), "bridge", "other"), "M_FORBIDDEN", `may not act for bridge "other"`},
		{"no-user-id", "", cmd("r2", bob, "x"), "M_FORBIDDEN", "no user_id"},
		{"unknown-bridge", e.user, with(cmd("r3", bob, "x"), "bridge", "nope"), "M_FORBIDDEN", "unknown bridge"},
		{"outside-namespace", e.user, cmd("r4", "@alice:"+org, "x"), "M_FORBIDDEN", "sender outside the namespace"},
		{"namespace-not-anchored", e.user, cmd("r5", "@xirc_bob:"+org, "x"), "M_FORBIDDEN", "sender outside the namespace"},
		{"other-org-sender", e.user, cmd("r6", "@irc_bob:elsewhere.test", "x"), "M_FORBIDDEN", "sender outside the namespace"},
		{"bad-sender", e.user, cmd("r7", "irc_bob", "x"), "M_INVALID_PARAM", "sender"},
		{"room-not-allowed", e.user, with(cmd("r8", bob, "x"), "room", e.other), "M_FORBIDDEN", "room not allowed"},
		{"unknown-alias", e.user, with(cmd("r9", bob, "x"), "room", "#nope:"+org), "M_FORBIDDEN", "room not allowed"},
		{"malformed-json", e.user, []byte(`{"type":"parley.bridge.v1",`), "M_BAD_JSON", ""},
		{"unknown-field", e.user, with(cmd("r10", bob, "x"), "extra", true), "M_BAD_JSON", "unknown field"},
		{"not-utf8", e.user, []byte("{\"type\":\"parley.bridge.v1\",\"bridge\":\"irc\",\"txn_id\":\"\xff\"}"), "M_BAD_JSON", "UTF-8"},
		{"oversized-content", e.user, cmd("r11", bob, big), "M_TOO_LARGE", "body"},
		{"oversized-message", e.user, cmd("r12", bob, big+big), "M_TOO_LARGE", "command of"},
		{"invalid-content", e.user, with(cmd("r13", bob, "x"), "content", map[string]any{"msgtype": "m.bogus", "body": "x"}), "M_INVALID_PARAM", "msgtype"},
		{"state-event-type", e.user, with(with(cmd("r14", bob, "x"), "event_type", "m.room.topic"), "content", map[string]any{"topic": "x"}), "M_INVALID_PARAM", "cannot be sent"},
		{"private-room", e.user, with(cmd("r15", bob, "x"), "room", e.private), "M_FORBIDDEN", "private"},
		{"real-account", e.user, cmd("r16", "@irc_real:"+org, "x"), "M_FORBIDDEN", "registered account"},
		{"typing-not-member", e.user, with(with(cmd("r17", "@irc_zed:"+org, ""), "op", OpTyping), "content", nil), "M_FORBIDDEN", "not a member"},
	}
	for _, c := range cases {
		e.publish(c.user, c.id, c.body)
	}
	e.publish(e.user, "good", cmd("good", bob, "still flowing"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "still flowing" })

	got := map[string]amqp091.Delivery{}
	for _, d := range e.deadLetters(len(cases)) {
		got[d.MessageId] = d
	}
	for _, c := range cases {
		d, ok := got[c.id]
		if !ok {
			t.Errorf("%s: not dead-lettered", c.id)
			continue
		}
		reason, _ := d.Headers[amqp.HeaderError].(string)
		if !strings.HasPrefix(reason, c.code+": ") || !strings.Contains(reason, c.reason) {
			t.Errorf("%s: x-parley-error %q, want %s …%s…", c.id, reason, c.code, c.reason)
		}
		if raw, ok := c.body.([]byte); ok && string(d.Body) != string(raw) {
			t.Errorf("%s: body changed in the DLQ", c.id)
		}
	}
	if _, ok := got["good"]; ok {
		t.Error("the good command was dead-lettered")
	}
	if b := e.bodies(e.lobby); len(b) != 1 || b["still flowing"] != 1 {
		t.Errorf("lobby bodies %v", b)
	}
	if b := e.bodies(e.private); len(b) != 0 {
		t.Errorf("private bodies %v", b)
	}
	if m := e.nodes[0].Srv.Cluster().Store().Membership(e.private, bob).Membership; m != "" {
		t.Errorf("bob is %q in the private room", m)
	}
}

// HTML in a command is sanitized as a client's would be, not refused; the sanitized event is
// what clients and bridges see.
func TestHTMLSanitized(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	q := e.bindEvents(RoutingKey(e.lobby, "m.room.message"))
	c := cmd("html", "@irc_bob:"+org, "hi")
	c["content"] = map[string]any{"msgtype": "m.text", "body": "hi",
		"formatted_body": `<b>bold</b><script>alert(1)</script><img src=x onerror="alert(2)"><a href="javascript:alert(3)">l</a><iframe src="https://evil.test"></iframe>`}
	e.publish(e.user, "html", c)
	check := func(where string, ev map[string]any) {
		content := ev["content"].(map[string]any)
		fb, _ := content["formatted_body"].(string)
		if !strings.Contains(fb, "<b>bold</b>") || content["format"] != "org.matrix.custom.html" {
			t.Errorf("%s: formatted_body %q format %v", where, fb, content["format"])
		}
		for _, bad := range []string{"<script", "onerror", "javascript:", "<iframe", "alert"} {
			if strings.Contains(fb, bad) {
				t.Errorf("%s: %q survived: %q", where, bad, fb)
			}
		}
	}
	check("websocket", nextEvent(t, e.alice, e.lobby, "m.room.message", nil))
	_, ev := q.waitFor(t, "the sanitized event", func(d amqp091.Delivery, ev map[string]any) bool { return body(ev) == "hi" })
	check("events exchange", ev)
	e.expectNoDeadLetters()
}

// A private room: refused until the virtual user is invited, then the first send joins it.
func TestInvitedVirtualUserJoinsPrivateRoom(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	carol := "@irc_carol:" + org
	e.publish(e.user, "p1", cmd("p1", carol, "creates carol")) // carol exists after this
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "creates carol" })
	if _, err := e.alice.Request(ctxT(t, 10*time.Second), client.Frame{"op": "invite", "room_id": e.private, "user_id": carol}); err != nil {
		t.Fatal(err)
	}
	c := cmd("p2", carol, "in private")
	c["room"] = e.private
	e.publish(e.user, "p2", c)
	msg := nextEvent(t, e.alice, e.private, "m.room.message", nil)
	if msg["sender"] != carol || body(msg) != "in private" {
		t.Fatalf("message %v", msg)
	}
	if m := e.nodes[0].Srv.Cluster().Store().Membership(e.private, carol).Membership; m != "join" {
		t.Fatalf("carol is %q", m)
	}
	e.expectNoDeadLetters()
}

// A stopped bridge service resumes from the cursor in the Raft log: what was committed while
// it was away is published, what was published before is not published again.
func TestRelayResumesFromCursor(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	q := e.bindEvents(RoutingKey(e.lobby, "*"))
	ctx := ctxT(t, 30*time.Second)
	first, err := e.alice.Send(ctx, e.lobby, "before", "before")
	if err != nil {
		t.Fatal(err)
	}
	q.waitFor(t, "the first message", func(d amqp091.Delivery, ev map[string]any) bool { return ev["event_id"] == first })
	store := e.nodes[0].Srv.Cluster().Store()
	bridgetest.WaitFor(t, 10*time.Second, "the cursor", func() bool { return store.BridgeCursor() >= store.StreamPos() })
	e.svcs[0].Close()
	before := len(q.snapshot())

	var ids []string
	for i := range 20 {
		id, err := e.alice.Send(ctx, e.lobby, fmt.Sprintf("away-%d", i), fmt.Sprintf("away %d", i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(q.snapshot()); n != before {
		t.Fatalf("%d events published while the service was stopped", n-before)
	}
	e.backlogMax.Store(0)
	e.svcs[0] = e.startService(0, e.nodes[0])
	q.waitFor(t, "the last message", func(d amqp091.Delivery, ev map[string]any) bool { return ev["event_id"] == ids[len(ids)-1] })
	// OnBacklog saw the 20 events waiting when the relay resumed, and 0 once through.
	if m := e.backlogMax.Load(); m < int64(len(ids)) {
		t.Errorf("largest backlog reported: %d, want at least %d", m, len(ids))
	}
	bridgetest.WaitFor(t, 10*time.Second, "a backlog of 0", func() bool { return e.backlogLast.Load() == 0 })
	after := q.snapshot()[before:]
	if len(after) != len(ids) {
		t.Fatalf("%d events after the restart, want %d", len(after), len(ids))
	}
	for i, d := range after {
		if d.MessageId != ids[i] {
			t.Fatalf("event %d is %s, want %s", i, d.MessageId, ids[i])
		}
	}
}
