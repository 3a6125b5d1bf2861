package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge"
	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/node/client"
)

// The real binary with bridges in its YAML config: it declares the bridge topology, applies a
// bridge's command for its WebSocket users, publishes their messages to the events exchange,
// and dead-letters a command without user_id, which its metrics count.
func TestBridgeBinary(t *testing.T) {
	vhostURL := freshVhost(t)
	u, _ := url.Parse(vhostURL)
	user := u.User.Username()
	p := &proc{t: t, id: "n1", http: freeAddr(t), raft: freeAddr(t), dir: t.TempDir()}
	cfg := fmt.Sprintf("org: sys.test\namqp:\n  url: %q\nbridges:\n  - id: irc\n    amqp_user: %q\n    namespace: \"irc_.*\"\n    rooms: [\"#lobby:sys.test\"]\n",
		vhostURL, user)
	cfgFile := filepath.Join(t.TempDir(), "parley.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p.args = []string{"--config", cfgFile}
	p.env = nodeEnv(p, "sys-secret")
	p.start()
	t.Cleanup(func() {
		if code := p.stop(); code != 0 {
			t.Errorf("exit code %d", code)
		}
		if t.Failed() {
			t.Logf("--- log ---\n%s", p.logs())
		}
	})
	waitLeader(t, p)
	alice := dial(t, p, register(t, p, "alice"))
	room := must(t, alice, client.Frame{"op": "create_room", "alias": "lobby", "visibility": "public"})["room_id"].(string)

	const org = "sys.test"
	b := listenAsBridge(t, vhostURL, org)
	b.bind(room, "*")
	ch, events := b.ch, b.events

	publish := func(userID string, cmd map[string]any) {
		t.Helper()
		body, _ := json.Marshal(cmd)
		if err := ch.PublishWithContext(context.Background(), "", bridge.CommandQueue(org), false, false, amqp091.Publishing{
			ContentType: "application/json", DeliveryMode: amqp091.Persistent, UserId: userID, Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	command := func(txn, text string) map[string]any {
		return map[string]any{"type": bridge.CommandType, "bridge": "irc", "txn_id": txn, "op": "send",
			"room": "#lobby:sys.test", "sender": "@irc_bob:sys.test", "content": map[string]any{"msgtype": "m.text", "body": text}}
	}
	publish(user, command("b1", "from the bridge"))
	if got := waitBody(t, alice, "from the bridge"); got["sender"] != "@irc_bob:sys.test" {
		t.Fatalf("got %v", got)
	}
	if _, err := alice.Send(ctx(t), room, "a1", "to the bridge"); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(20 * time.Second)
	for found := false; !found; {
		select {
		case d := <-events:
			found = strings.Contains(string(d.Body), `"body":"to the bridge"`) &&
				d.RoutingKey == bridge.RoutingKey(room, "m.room.message")
		case <-timeout:
			t.Fatal("alice's message never reached the events exchange")
		}
	}
	waitMetric(t, p, "parley_bridge_events_published_total", func(v float64) bool { return v >= 2 }, "at least 2 (the bridge's message and alice's)")
	waitMetric(t, p, "parley_bridge_queue_depth", func(v float64) bool { return v == 0 }, "0 once caught up")

	publish("", command("b2", "no user_id"))
	deadline := time.Now().Add(20 * time.Second)
	for {
		d, ok, err := ch.Get(bridge.DeadLetterQueue(org), true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if r, _ := d.Headers[amqp.HeaderError].(string); !strings.HasPrefix(r, "M_FORBIDDEN: ") {
				t.Fatalf("x-parley-error %q", r)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing in the DLQ")
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitMetric(t, p, `parley_dead_letters_total{code="M_FORBIDDEN",source="bridge"}`, func(v float64) bool { return v == 1 }, "1")
	waitMetric(t, p, `parley_amqp_reconnects_total{component="bridge"}`, func(v float64) bool { return v >= 1 }, "at least 1 (the first connect)")
}

// bridgeSide is what a bridge of org sees on the broker: a channel, and the events the node
// publishes to org's events exchange for the bindings made with bind.
type bridgeSide struct {
	t      *testing.T
	org    string
	ch     *amqp091.Channel
	queue  string
	events <-chan amqp091.Delivery
}

// listenAsBridge connects to vhostURL once org's node has declared its bridge topology.
func listenAsBridge(t *testing.T, vhostURL, org string) *bridgeSide {
	t.Helper()
	conn, err := amqp091.Dial(vhostURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		_, qerr := ch.QueueDeclarePassive(bridge.CommandQueue(org), true, false, false, false, nil)
		_ = ch.Close()
		if qerr == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node never declared %s: %v", bridge.CommandQueue(org), qerr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	events, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &bridgeSide{t: t, org: org, ch: ch, queue: q.Name, events: events}
}

// bind adds the events of room of type typ ("*" for all) to b.events.
func (b *bridgeSide) bind(room, typ string) {
	b.t.Helper()
	if err := b.ch.QueueBind(b.queue, bridge.RoutingKey(room, typ), bridge.EventsExchange(b.org), false, nil); err != nil {
		b.t.Fatal(err)
	}
}

// TestBridgeInARoomOfAPeerOrg: globex's IRC bridge acts in a room of acme. Its virtual user's
// first message joins the room through acme (make_join/send_join), as a client's join does,
// and its leave goes to acme too (send_state); acme's user sees the join, the message and the
// leave, and the bridge gets acme's messages in the room. Until 2026-12-07 bridges joined and
// left only rooms of their own org.
func TestBridgeInARoomOfAPeerOrg(t *testing.T) {
	vhost := freshVhost(t)
	u, _ := url.Parse(vhost)
	bridges := fmt.Sprintf("bridges:\n  - id: irc\n    amqp_user: %q\n    namespace: \"irc_.*\"\n    rooms: [\"#ops:acme.test\"]\n", u.User.Username())
	orgs := startOrgsWith(t, vhost, map[string]string{"globex.test": bridges}, "acme.test", "globex.test")
	acme := orgs[0]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	room := must(t, alice, client.Frame{"op": "create_room", "alias": "ops", "visibility": "public"})["room_id"].(string)

	const org = "globex.test"
	b := listenAsBridge(t, vhost, org)
	b.bind(room, "m.room.message")
	ch, events := b.ch, b.events
	publish := func(txn, op, room string, content map[string]any) {
		t.Helper()
		cmd := map[string]any{"type": bridge.CommandType, "bridge": "irc", "txn_id": txn, "op": op,
			"room": room, "sender": "@irc_bob:globex.test"}
		if content != nil {
			cmd["content"] = content
		}
		body, _ := json.Marshal(cmd)
		if err := ch.PublishWithContext(context.Background(), "", bridge.CommandQueue(org), false, false, amqp091.Publishing{
			ContentType: "application/json", DeliveryMode: amqp091.Persistent, UserId: u.User.Username(), Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	member := func(membership string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case f := <-alice.Pushes():
				e, _ := f["event"].(map[string]any)
				c, _ := e["content"].(map[string]any)
				if e["type"] == "m.room.member" && e["state_key"] == "@irc_bob:globex.test" && c["membership"] == membership {
					return
				}
			case <-deadline:
				t.Fatalf("alice never saw irc_bob's %s", membership)
			}
		}
	}

	publish("b1", "send", "#ops:acme.test", map[string]any{"msgtype": "m.text", "body": "hello from irc"})
	member("join")
	if got := waitBody(t, alice, "hello from irc"); got["sender"] != "@irc_bob:globex.test" {
		t.Fatalf("got %v", got)
	}
	if _, err := alice.Send(ctx(t), room, "a1", "hello irc"); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(30 * time.Second)
	for found := false; !found; {
		select {
		case d := <-events:
			found = strings.Contains(string(d.Body), `"body":"hello irc"`)
		case <-timeout:
			t.Fatal("alice's message never reached globex's events exchange")
		}
	}
	publish("b2", "leave", "#ops:acme.test", nil)
	member("leave")

	// An invite into a private room of acme, which globex knows only through it: the bridge's
	// leave declines it at acme (send_leave). The room goes into the bridge's rooms by id,
	// with a restart of globex.
	secret := must(t, alice, client.Frame{"op": "create_room", "visibility": "private"})["room_id"].(string)
	globex := orgs[1].node
	if code := globex.stop(); code != 0 {
		t.Fatalf("globex exited %d", code)
	}
	cfgFile := filepath.Join(filepath.Dir(globex.dir), "parley.yaml")
	cfg, err := os.ReadFile(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg = []byte(strings.Replace(string(cfg), `rooms: ["#ops:acme.test"]`, fmt.Sprintf(`rooms: ["#ops:acme.test", %q]`, secret), 1))
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	globex.start()
	waitLeader(t, globex)
	b.bind(secret, "m.room.member")
	must(t, alice, client.Frame{"op": "invite", "room_id": secret, "user_id": "@irc_bob:globex.test"})
	member("invite")
	timeout = time.After(30 * time.Second)
	for found := false; !found; { // the invite is committed at globex
		select {
		case d := <-events:
			found = strings.Contains(string(d.Body), `"membership":"invite"`) && strings.Contains(string(d.Body), secret)
		case <-timeout:
			t.Fatal("the invite never reached globex's events exchange")
		}
	}
	publish("b3", "leave", secret, nil)
	member("leave")
	if d, ok, err := ch.Get(bridge.DeadLetterQueue(org), true); err != nil || ok {
		t.Fatalf("dead-lettered: %s %v %v", d.Body, d.Headers, err)
	}
}
