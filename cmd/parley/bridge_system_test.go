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

	conn, err := amqp091.Dial(vhostURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const org = "sys.test"
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
	if err := ch.QueueBind(q.Name, bridge.RoutingKey(room, "*"), bridge.EventsExchange(org), false, nil); err != nil {
		t.Fatal(err)
	}
	events, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}

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
	deadline = time.Now().Add(20 * time.Second)
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
