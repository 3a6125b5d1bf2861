package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/internal/bridgetest"
	"github.com/parley-chat/parley/config"
	"github.com/parley-chat/parley/node/client"
)

const org = "test.local"

var lobbyAlias = "#lobby:" + org

// env is one test's world: a vhost, an org of real nodes each running the bridge service,
// a user alice on a WebSocket, rooms, and the test's own AMQP connection playing the bridge.
type env struct {
	t       *testing.T
	vhost   *bridgetest.Vhost
	user    string // the broker user of vhost.URL, which bridge "irc" publishes as
	ircUser string // with withIRCUser: a broker user of its own for bridge "irc"
	ircPass string
	ircMore []string // with withIRCRooms: more rooms of bridge "irc"
	nodes   []*bridgetest.Node
	svcs    []*Service
	bridges []config.BridgeConfig

	alice   *client.Conn
	token   string // alice's
	lobby   string // public, bridged by alias
	private string // private, bridged by id
	other   string // public, not bridged

	amqp  *amqp091.Connection
	pubCh *amqp091.Channel // confirm mode
	pubMu sync.Mutex

	// What the services reported through OnBacklog: the largest backlog, and the latest.
	backlogMax, backlogLast atomic.Int64
	// deadLettered counts what the services reported through OnDeadLetter.
	deadLettered atomic.Int64

	remote        RemoteRooms          // withRemote
	failRecord    func(*Command) error // withFailRecord
	deliveryLimit int                  // withDeliveryLimit
}

type envOpt func(*env)

func withNodes(n int) envOpt {
	return func(e *env) { e.nodes = make([]*bridgetest.Node, n) }
}

// withIRCUser gives bridge "irc" a broker user of its own, with the permissions
// docs/bridges.md recommends.
func withIRCUser() envOpt {
	return func(e *env) { e.ircUser = "irc-" + bridgetest.RandHex(4) }
}

// withIRCRooms adds rooms (ids or aliases, existing or not) to bridge "irc"'s.
func withIRCRooms(rooms ...string) envOpt {
	return func(e *env) { e.ircMore = append(e.ircMore, rooms...) }
}

// withRemote gives the services a federation peer (Options.Remote) and bridge "irc" its room.
func withRemote(r RemoteRooms, room string) envOpt {
	return func(e *env) {
		e.remote = r
		e.ircMore = append(e.ircMore, room)
	}
}

// withFailRecord has the services run f before proposing a command's record (Options.failRecord).
func withFailRecord(f func(*Command) error) envOpt {
	return func(e *env) { e.failRecord = f }
}

// withDeliveryLimit sets the command queue's x-delivery-limit (Options.DeliveryLimit).
func withDeliveryLimit(n int) envOpt {
	return func(e *env) { e.deliveryLimit = n }
}

// bridgePermissions are docs/bridges.md's permissions (configure, write, read) for a bridge
// user: queues of its own (named USER.* or server-named), publishing to the default exchange
// (the command queue), binding to and reading from the events exchange; nothing else.
func bridgePermissions(user, org string) (configure, write, read string) {
	own := regexp.QuoteMeta(user) + `\..*`
	return `^(amq\.gen-.*|` + own + `)$`,
		`^(amq\.default|amq\.gen-.*|` + own + `)$`,
		`^(` + regexp.QuoteMeta(EventsExchange(org)) + `|amq\.gen-.*|` + own + `)$`
}

func newEnv(t *testing.T, opts ...envOpt) *env {
	t.Helper()
	e := &env{t: t, nodes: make([]*bridgetest.Node, 1)}
	for _, o := range opts {
		o(e)
	}
	e.vhost = bridgetest.NewVhost(t)
	u, _ := url.Parse(e.vhost.URL)
	e.user = u.User.Username()
	ircUser := e.user
	if e.ircUser != "" {
		c, w, r := bridgePermissions(e.ircUser, org)
		e.ircPass = bridgetest.AddUser(t, e.vhost, e.ircUser, c, w, r)
		ircUser = e.ircUser
	}
	e.nodes = bridgetest.StartCluster(t, org, len(e.nodes))

	ctx := ctxT(t, 20*time.Second)
	leader := bridgetest.WaitLeader(t, e.nodes)
	var err error
	for attempt := 0; ; attempt++ { // an election may be going on
		_, e.token, err = client.Register(ctx, leader.BaseURL(), "alice", "correct horse battery")
		var perr *client.Error
		if err == nil || attempt == 50 || !errors.As(err, &perr) || perr.Code != "M_UNAVAILABLE" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	e.alice = e.dial(leader, e.token)
	e.lobby = e.createRoom(map[string]any{"alias": "lobby", "visibility": "public", "name": "Lobby"})
	e.private = e.createRoom(map[string]any{"visibility": "private"})
	e.other = e.createRoom(map[string]any{"visibility": "public"})

	e.bridges = []config.BridgeConfig{
		{ID: "irc", AMQPUser: ircUser, Namespace: "irc_.*", Rooms: append([]string{lobbyAlias, e.private}, e.ircMore...)},
		{ID: "other", AMQPUser: "ircbot", Namespace: "other_.*", Rooms: []string{lobbyAlias}},
	}
	for i, n := range e.nodes {
		e.svcs = append(e.svcs, e.startService(i, n))
	}

	conn, err := amqp091.DialConfig(e.vhost.URL, amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.amqp = conn
	e.waitTopology()
	return e
}

func (e *env) startService(i int, n *bridgetest.Node) *Service {
	e.t.Helper()
	s, err := Start(Options{Org: org, Cluster: n.Srv.Cluster(), AMQPURL: e.vhost.URL,
		Bridges: e.bridges, Logger: bridgetest.Logger(e.t), OnTyping: n.Srv.SetRemoteTyping,
		ConnName: e.connName(i), MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		BatchSize: 64, Remote: e.remote, failRecord: e.failRecord, DeliveryLimit: e.deliveryLimit,
		OnDeadLetter: func(string) { e.deadLettered.Add(1) }, OnBacklog: func(events int64) {
			e.backlogLast.Store(events)
			for m := e.backlogMax.Load(); events > m && !e.backlogMax.CompareAndSwap(m, events); m = e.backlogMax.Load() {
			}
		}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(s.Close)
	return s
}

func (e *env) connName(i int) string { return fmt.Sprintf("parley-bridge-%s-n%d", e.vhost.Name, i+1) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) dial(n *bridgetest.Node, token string) *client.Conn {
	e.t.Helper()
	c, err := client.Dial(ctxT(e.t, 10*time.Second), n.WSURL(), token, 100000)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.Close)
	return c
}

// connectTo returns a dialer of alice's WebSocket to the node target returns, for the
// traffic's goroutine.
func (e *env) connectTo(target func() *bridgetest.Node) func() (*client.Conn, error) {
	return func() (*client.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return client.Dial(ctx, target().WSURL(), e.token, 100000)
	}
}

func (e *env) createRoom(params map[string]any) string {
	e.t.Helper()
	params["op"] = "create_room"
	r, err := e.alice.Request(ctxT(e.t, 10*time.Second), params)
	if err != nil {
		e.t.Fatal(err)
	}
	return r["room_id"].(string)
}

// waitTopology waits until the service declared the command queue and the events exchange.
func (e *env) waitTopology() {
	e.t.Helper()
	bridgetest.WaitFor(e.t, 20*time.Second, "bridge topology", func() bool {
		ch, err := e.amqp.Channel()
		if err != nil {
			e.t.Fatal(err)
		}
		defer ch.Close()
		if _, err := ch.QueueDeclarePassive(CommandQueue(org), true, false, false, false, nil); err != nil {
			return false
		}
		return ch.ExchangeDeclarePassive(EventsExchange(org), "topic", true, false, false, false, nil) == nil
	})
}

// cmd is a command with defaults: bridge irc, op send, the lobby by alias.
func cmd(txn, sender, body string) map[string]any {
	return map[string]any{"type": CommandType, "bridge": "irc", "txn_id": txn, "op": OpSend, "room": lobbyAlias,
		"sender": sender, "content": map[string]any{"msgtype": "m.text", "body": body}}
}

// publish sends a command (a map, marshalled, or raw bytes) to the command queue with the
// given user_id and message_id, and waits for the confirm.
func (e *env) publish(userID, messageID string, body any) {
	e.t.Helper()
	if err := e.tryPublish(userID, messageID, body); err != nil {
		e.t.Fatal(err)
	}
}

// tryPublish is publish for other goroutines than the test's. A nack (a quorum queue just
// declared on a loaded broker may not take messages yet) is retried for a while.
func (e *env) tryPublish(userID, messageID string, body any) error {
	raw, ok := body.([]byte)
	if !ok {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return err
		}
	}
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if attempt > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if err = e.publishOnce(userID, messageID, raw); err == nil {
			return nil
		}
	}
	return err
}

func (e *env) publishOnce(userID, messageID string, raw []byte) error {
	if e.pubCh == nil || e.pubCh.IsClosed() {
		ch, err := e.amqp.Channel()
		if err != nil {
			return err
		}
		if err := ch.Confirm(false); err != nil {
			return err
		}
		e.pubCh = ch
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := e.pubCh.PublishWithDeferredConfirmWithContext(ctx, "", CommandQueue(org), true, false, amqp091.Publishing{
		ContentType: "application/json", DeliveryMode: amqp091.Persistent, UserId: userID, MessageId: messageID, Body: raw})
	if err != nil {
		return err
	}
	if ack, err := dc.WaitContext(ctx); err != nil || !ack {
		return fmt.Errorf("publish %s: ack %v, err %v (channel closed: %v)", messageID, ack, err, e.pubCh.IsClosed())
	}
	return nil
}

// deadLetters reads n messages from the DLQ.
func (e *env) deadLetters(n int) []amqp091.Delivery {
	e.t.Helper()
	ch, err := e.amqp.Channel()
	if err != nil {
		e.t.Fatal(err)
	}
	defer ch.Close()
	var got []amqp091.Delivery
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < n {
		d, ok, err := ch.Get(DeadLetterQueue(org), true)
		if err != nil {
			e.t.Fatal(err)
		}
		if ok {
			got = append(got, d)
			continue
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d of %d dead letters after 20s", len(got), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return got
}

// eventsQueue declares an exclusive queue bound to the events exchange with keys and
// collects its deliveries.
type eventsQueue struct {
	mu   sync.Mutex
	msgs []amqp091.Delivery
}

func (e *env) bindEvents(keys ...string) *eventsQueue {
	e.t.Helper()
	ch, err := e.amqp.Channel()
	if err != nil {
		e.t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, k := range keys {
		if err := ch.QueueBind(q.Name, k, EventsExchange(org), false, nil); err != nil {
			e.t.Fatal(err)
		}
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	eq := &eventsQueue{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range deliveries {
			eq.mu.Lock()
			eq.msgs = append(eq.msgs, d)
			eq.mu.Unlock()
		}
	}()
	e.t.Cleanup(func() { _ = ch.Close(); <-done })
	return eq
}

func (q *eventsQueue) snapshot() []amqp091.Delivery {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]amqp091.Delivery(nil), q.msgs...)
}

// wireEvent decodes a delivery's body.
func wireEvent(t *testing.T, d amqp091.Delivery) map[string]any {
	t.Helper()
	var ev map[string]any
	if err := json.Unmarshal(d.Body, &ev); err != nil {
		t.Fatalf("event body %s: %v", d.Body, err)
	}
	return ev
}

// waitFor waits for a delivery matching pred.
func (q *eventsQueue) waitFor(t *testing.T, what string, pred func(d amqp091.Delivery, ev map[string]any) bool) (amqp091.Delivery, map[string]any) {
	t.Helper()
	var found amqp091.Delivery
	var foundEv map[string]any
	bridgetest.WaitFor(t, 20*time.Second, what, func() bool {
		for _, d := range q.snapshot() {
			if ev := wireEvent(t, d); pred(d, ev) {
				found, foundEv = d, ev
				return true
			}
		}
		return false
	})
	return found, foundEv
}

// nextEvent waits for alice's next pushed event of typ in room with pred.
func nextEvent(t *testing.T, c *client.Conn, room, typ string, pred func(ev map[string]any) bool) map[string]any {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case f, ok := <-c.Pushes():
			if !ok {
				t.Fatal("connection closed")
			}
			if f["op"] != "event" {
				continue
			}
			ev := f["event"].(map[string]any)
			if ev["room_id"] == room && ev["type"] == typ && (pred == nil || pred(ev)) {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event in %s", typ, room)
		}
	}
}

func body(ev map[string]any) string {
	c, _ := ev["content"].(map[string]any)
	b, _ := c["body"].(string)
	return b
}

// history returns every event of a room, oldest first, read by alice.
func (e *env) history(room string) []map[string]any {
	e.t.Helper()
	var all []map[string]any
	before := ""
	for {
		req := client.Frame{"op": "history", "room_id": room, "limit": 100}
		if before != "" {
			req["before"] = before
		}
		r, err := e.alice.Request(ctxT(e.t, 10*time.Second), req)
		if err != nil {
			e.t.Fatal(err)
		}
		evs, _ := r["events"].([]any)
		page := make([]map[string]any, 0, len(evs))
		for _, ev := range evs {
			page = append(page, ev.(map[string]any))
		}
		all = append(page, all...)
		start, _ := r["start"].(string)
		if start == "" {
			return all
		}
		before = start
	}
}

// bodies counts the message bodies in a room's history.
func (e *env) bodies(room string) map[string]int {
	out := map[string]int{}
	for _, ev := range e.history(room) {
		if ev["type"] == "m.room.message" {
			out[body(ev)]++
		}
	}
	return out
}

func contextTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
