package bridge

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/config"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/federation"
)

// A repeat of an applied (bridge, txn_id) is acked and changes nothing, whatever it says the
// second time (docs/bridges.md), as a client's send repeated with a committed txn_id answers
// from the record before its content is looked at: a bridge that resends after an unclear
// outcome must not find a command that was applied in the dead-letter queue. Only the checks
// that say who sent it (user_id, bridge) come first.
func TestRepeatOfAppliedTxnIsAckedWhateverItSays(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bob := "@irc_bob:" + org
	e.publish(e.user, "first", cmd("rep", bob, "applied once"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "applied once" })

	badContent := cmd("rep", bob, "")
	badContent["content"] = map[string]any{"msgtype": "m.bogus", "body": "x"}
	otherRoom := cmd("rep", bob, "elsewhere")
	otherRoom["room"] = e.other
	outside := cmd("rep", "@alice:"+org, "as alice")
	for id, c := range map[string]map[string]any{"bad-content": badContent, "other-room": otherRoom, "outside": outside} {
		e.publish(e.user, id, c)
	}
	e.publish(e.user, "end", cmd("end", bob, "sentinel"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "sentinel" })

	e.expectNoDeadLetters()
	if got := e.bodies(e.lobby); len(got) != 2 || got["applied once"] != 1 || got["sentinel"] != 1 {
		t.Fatalf("lobby bodies %v", got)
	}
	if got := e.bodies(e.other); len(got) != 0 {
		t.Fatalf("bodies in the room not bridged: %v", got)
	}

	// Who sent it is still checked first: another bridge's user_id is refused, not acked.
	stray := cmd("rep", bob, "")
	stray["bridge"] = "other"
	e.publish(e.user, "stray", stray)
	if d := e.deadLetters(1)[0]; d.MessageId != "stray" {
		t.Fatalf("dead letter %q", d.MessageId)
	}
}

// The body of an event on the events exchange is the client protocol's EVENT, as the
// WebSocket pushes it to a member who did not send it: the same fields and values, a message
// with HTML-sensitive characters, a redaction (redacts), and a client's own message (whose
// unsigned.txn_id only its sender's connections see) alike.
func TestEventBodyIsTheClientsEvent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	q := e.bindEvents(RoutingKey(e.lobby, "*"))
	sameAsPush := func(what string, push map[string]any) {
		t.Helper()
		want := maps.Clone(push)
		if u, ok := want["unsigned"].(map[string]any); ok && what == "alice's own message" {
			u = maps.Clone(u)
			delete(u, "txn_id") // only to the sender's own connections
			if len(u) == 0 {
				delete(want, "unsigned")
			} else {
				want["unsigned"] = u
			}
		}
		_, got := q.waitFor(t, what, func(_ amqp091.Delivery, ev map[string]any) bool { return ev["event_id"] == push["event_id"] })
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: published\n%v\npushed\n%v", what, got, want)
		}
	}

	c := cmd("b1", "@irc_bob:"+org, `a < b && "c" > d`)
	c["content"].(map[string]any)["format"] = "org.matrix.custom.html"
	c["content"].(map[string]any)["formatted_body"] = `a &lt; b <b>&amp;&amp;</b> "c"`
	e.publish(e.user, "b1", c)
	fromBridge := nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return ev["sender"] == "@irc_bob:"+org })
	sameAsPush("the bridge's message", fromBridge)

	ctx := ctxT(t, 10*time.Second)
	if _, err := e.alice.Send(ctx, e.lobby, "own-txn", "from alice"); err != nil {
		t.Fatal(err)
	}
	own := nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "from alice" })
	if u, _ := own["unsigned"].(map[string]any); u["txn_id"] != "own-txn" {
		t.Fatalf("alice's own push has no txn_id: %v", own)
	}
	sameAsPush("alice's own message", own)

	if _, err := e.alice.Request(ctx, map[string]any{"op": "redact", "room_id": e.lobby, "event_id": fromBridge["event_id"],
		"reason": "<off topic>"}); err != nil {
		t.Fatal(err)
	}
	redaction := nextEvent(t, e.alice, e.lobby, "m.room.redaction", nil)
	if redaction["redacts"] != fromBridge["event_id"] {
		t.Fatalf("redaction %v", redaction)
	}
	sameAsPush("the redaction", redaction)
}

// A bridge may act in its rooms named either way: a room configured by id is allowed by its
// alias, one configured by alias by its id (also an alias with several dots, which is never
// mangled as a routing key is); any other room is not, by id or alias.
func TestRoomPermissionByIDAndAlias(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	svc := e.svcs[0]
	byID := &bridgeConf{id: "by-id", rooms: []string{e.lobby}}
	byAlias := &bridgeConf{id: "by-alias", rooms: []string{lobbyAlias}}
	elsewhere := &bridgeConf{id: "elsewhere", rooms: []string{e.private}}
	dotted := e.createRoom(map[string]any{"alias": "a.b..c", "visibility": "public"})
	dottedAlias := "#a.b..c:" + org
	byDotted := &bridgeConf{id: "by-dotted", rooms: []string{dottedAlias}}
	for _, room := range []string{dottedAlias, dotted} {
		if id, err := svc.allowedRoom(byDotted, room); err != nil || id != dotted {
			t.Errorf("bridge by-dotted, room %s: %q %v, want %s", room, id, err, dotted)
		}
	}
	if _, err := svc.allowedRoom(byDotted, "#a_b__c:"+org); err == nil || err.Code != CodeForbidden {
		t.Errorf("the alias mangled as in a routing key is another alias: %v", err)
	}
	for _, tc := range []struct {
		b          *bridgeConf
		room, code string
	}{
		{byID, e.lobby, ""},
		{byID, lobbyAlias, ""},
		{byAlias, lobbyAlias, ""},
		{byAlias, e.lobby, ""},
		{byAlias, e.other, CodeForbidden},
		{byID, e.private, CodeForbidden},
		{elsewhere, lobbyAlias, CodeForbidden},
		{elsewhere, e.lobby, CodeForbidden},
		{elsewhere, e.private, ""},
	} {
		id, err := svc.allowedRoom(tc.b, tc.room)
		switch {
		case tc.code == "" && (err != nil || id != map[bool]string{true: e.private, false: e.lobby}[tc.b == elsewhere]):
			t.Errorf("bridge %s, room %s: %q %v, want allowed", tc.b.id, tc.room, id, err)
		case tc.code != "" && (err == nil || err.Code != tc.code):
			t.Errorf("bridge %s, room %s: %q %v, want %s", tc.b.id, tc.room, id, err, tc.code)
		}
	}
}

// A command that never commits is not retried forever: each failed commit returns it to the
// queue counted towards its x-delivery-limit, and RabbitMQ dead-letters it (with x-death, not
// x-parley-error) once that is spent; the commands behind it go on.
func TestCommandThatNeverCommitsEndsInTheDLQ(t *testing.T) {
	t.Parallel()
	const limit = 2
	var tries atomic.Int64
	e := newEnv(t, withDeliveryLimit(limit), withFailRecord(func(c *Command) error {
		if c.TxnID == "poison" {
			tries.Add(1)
			return errors.New("test: the commit failed")
		}
		return nil
	}))
	e.publish(e.user, "poison", cmd("poison", "@irc_bob:"+org, "never committed"))
	e.publish(e.user, "after", cmd("after", "@irc_bob:"+org, "after the poison"))
	nextEvent(t, e.alice, e.lobby, "m.room.message", func(ev map[string]any) bool { return body(ev) == "after the poison" })

	d := e.deadLetters(1)[0]
	if d.MessageId != "poison" || d.Headers["x-death"] == nil || d.Headers[amqp.HeaderError] != nil {
		t.Fatalf("dead letter %q with headers %v", d.MessageId, d.Headers)
	}
	if n := tries.Load(); n != limit+1 {
		t.Errorf("%d tries to commit, want %d (the first delivery and %d more)", n, limit+1, limit)
	}
	if got := e.bodies(e.lobby); got["never committed"] != 0 {
		t.Errorf("bodies %v", got)
	}
}

// A room id is a peer's choice (its state checks only that it is not empty and has no NUL):
// one with several dots, '#' and '*' is published with the contract's routing key, every '.'
// of the room id and the type made '_' and the rest as it is, and reaches a bridge bound to
// the room (ROOM.*) and one bound to the type (*.TYPE), as for any room.
func TestRoutingKeyOfAPeerRoomWithDotsAndWildcards(t *testing.T) {
	t.Parallel()
	peer := newPeerRoom(t)
	peer.roomID = "!a.b#c*d..e:" + peerOrgName
	peer.create.RoomID = peer.roomID
	if err := event.Seal(peer.create); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, withRemote(peer, peer.roomID))
	cluster := e.nodes[0].Srv.Cluster()
	peer.cluster.Store(cluster)
	const key = "!a_b#c*d__e:peer_test.m_room_create"
	if got := RoutingKey(peer.roomID, "m.room.create"); got != key {
		t.Fatalf("RoutingKey = %q, want %q", got, key)
	}
	byRoom := e.bindEvents("!a_b#c*d__e:peer_test.*")
	byType := e.bindEvents("*.m_room_create")

	res, err := cluster.ProposeBatch(ctxT(t, 20*time.Second), []*state.Command{{Kind: state.KindRemoteRoom,
		RemoteRoom: &state.RemoteRoom{RoomID: peer.roomID, Events: []*event.Event{peer.create}}}})
	if err != nil || !res[0].OK() {
		t.Fatalf("the peer's room: %v %+v", err, res)
	}
	for name, q := range map[string]*eventsQueue{"ROOM.*": byRoom, "*.TYPE": byType} {
		d, _ := q.waitFor(t, "the peer room's create event on "+name, func(_ amqp091.Delivery, ev map[string]any) bool {
			return ev["event_id"] == peer.create.EventID
		})
		if d.RoutingKey != key {
			t.Errorf("%s: routing key %q, want %q", name, d.RoutingKey, key)
		}
	}
}

// The bounds are inclusive: a txn_id of exactly 255 bytes (multi-byte UTF-8 counts in bytes)
// and a command of exactly 64 KiB are taken; one byte more is refused.
func TestParseCommandExactLimits(t *testing.T) {
	good := `{"type":"parley.bridge.v1","bridge":"irc","txn_id":"t1","op":"send","room":"#lobby:acme.test",` +
		`"sender":"@irc_bob:acme.test","content":{"msgtype":"m.text","body":"hi"}}`
	txn := strings.Repeat("é", 127) + "x" // 255 bytes
	if _, err := ParseCommand([]byte(strings.Replace(good, `"t1"`, `"`+txn+`"`, 1))); err != nil {
		t.Errorf("txn_id of 255 bytes: %v", err)
	}
	if _, err := ParseCommand([]byte(strings.Replace(good, `"t1"`, `"`+txn+`x"`, 1))); err == nil || err.Code != CodeInvalid {
		t.Errorf("txn_id of 256 bytes: %v", err)
	}
	padded := good + strings.Repeat(" ", MaxCommandBytes-len(good))
	if _, err := ParseCommand([]byte(padded)); err != nil {
		t.Errorf("command of exactly %d bytes: %v", MaxCommandBytes, err)
	}
	if _, err := ParseCommand([]byte(padded + " ")); err == nil || err.Code != CodeTooLarge {
		t.Errorf("command of %d bytes: %v", MaxCommandBytes+1, err)
	}
}

// The home org's refusal is the command's, but x-parley-error is "M_CODE: reason" whatever
// the peer answered: a code no refusal carries (not of the protocol's form, or a token code,
// state.RelayedCode) becomes M_UNKNOWN (naming it), an empty
// message a reason that says who refused.
func TestRemoteRefusalKeepsTheHeaderForm(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      *federation.Error
		code     string
		contains string
	}{
		{"lower case", &federation.Error{Code: "m_forbidden", Message: "banned"}, CodeUnknown, `"m_forbidden": banned`},
		{"no M_", &federation.Error{Code: "FORBIDDEN", Message: "banned"}, CodeUnknown, `"FORBIDDEN"`},
		{"bare M_", &federation.Error{Code: "M_", Message: "x"}, CodeUnknown, `"M_"`},
		{"with a colon", &federation.Error{Code: "M_X: y", Message: "z"}, CodeUnknown, `"M_X: y"`},
		{"empty message", &federation.Error{Code: "M_FORBIDDEN"}, "M_FORBIDDEN", "refused by the home org"},
		{"the protocol's", &federation.Error{Code: "M_LIMIT_EXCEEDED", Message: "slow down"}, "M_LIMIT_EXCEEDED", "slow down"},
		{"a token code", &federation.Error{Code: "M_UNKNOWN_TOKEN", Message: "x"}, CodeUnknown, `"M_UNKNOWN_TOKEN": x`},
		{"a code of no refusal", &federation.Error{Code: "M_EVENT_EXISTS", Message: "x"}, CodeUnknown, `"M_EVENT_EXISTS"`},
	} {
		rerr, err := remoteRefusal(context.Background(), tc.err)
		if err != nil || rerr == nil {
			t.Errorf("%s: %v %v", tc.name, rerr, err)
			continue
		}
		if h := rerr.Error(); rerr.Code != tc.code || !strings.HasPrefix(h, tc.code+": ") || !strings.Contains(h, tc.contains) ||
			strings.HasSuffix(h, ": ") {
			t.Errorf("%s: x-parley-error %q, want %s: …%s…", tc.name, h, tc.code, tc.contains)
		}
	}
}

// A namespace is matched against the whole localpart: one that would close the anchoring
// group early ("irc_.*)|(.*", which config's check refuses, but Options.Bridges is not
// checked by config) is refused rather than compiled into one that matches any localpart.
func TestNamespaceCannotEscapeItsAnchors(t *testing.T) {
	for _, ns := range []string{`irc_.*)|(.*`, `irc_)|(?:.*`, `x)|(?:alice`} {
		bs, err := compile([]config.BridgeConfig{{ID: "irc", AMQPUser: "u", Namespace: ns}})
		if err == nil {
			t.Errorf("namespace %q compiled; matches alice: %v", ns, bs["irc"].ns.MatchString("alice"))
		}
	}
}
