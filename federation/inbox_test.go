package federation

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// logSink collects an org's log records (JSON lines) for a test to read.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// records lists the records logged so far, each as its JSON fields.
func (l *logSink) records(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(l.buf.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// logsTo makes org's service log to sink (startTestOrgsWith's mutate).
func logsTo(org string, sink *logSink) func(*Options) {
	return func(o *Options) {
		if o.Org == org {
			o.Logger = slog.New(slog.NewJSONHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
	}
}

// publishTxn signs t as its origin with key and puts it into its destination's inbox.
func publishTxn(t *testing.T, amqpURL string, key *SigningKey, txn *Transaction) {
	t.Helper()
	if err := signMessage(txn, txn.Origin, key); err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(txn)
	if err != nil {
		t.Fatal(err)
	}
	publishRaw(t, amqpURL, txn.Destination, amqp091.Publishing{ContentType: "application/json", DeliveryMode: amqp091.Persistent,
		MessageId: txn.TxnID, Type: TypeTxn, Body: body})
}

// publishRaw puts msg into dest's inbox, with a publisher confirm.
func publishRaw(t *testing.T, amqpURL, dest string, msg amqp091.Publishing) {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL)
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
	conf, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), ExchangeFederation, dest, true, false, msg)
	if err != nil || !conf.Wait() {
		t.Fatalf("publish to %s: %v", dest, err)
	}
}

// TestForgedOwnJoinIsDroppedAtOnce: a peer relays "joins" of one of globex's users, in globex's
// name, into a room of the peer that globex does not hold: one signed with the peer's own key,
// one unsigned. A real one would be a lost join (its answer never committed here), which is
// requeued for a moment and then recovered from the home org; these are not globex's and are
// dropped and logged at once, and the valid event beside them is applied without delay. Until
// 2026-12-07 the forged joins were requeued (3 times as lost joins, then up to 10 times as
// events of a room not known yet) before anything checked their signature, holding the
// transaction worker for every org, and reached the recovery, where they were counted as an
// answer of the peer's that ended its get_missing_events outage.
func TestForgedOwnJoinIsDroppedAtOnce(t *testing.T) {
	acme, globex, sink, room := startForgeryScene(t)
	const alice, bob = forgeryAlice, forgeryBob

	forgedJoin := func(sign func(e *event.Event)) *event.Event {
		k := bob
		e := &event.Event{RoomID: "!elsewhere:acme.test", Sender: bob, Origin: globex.name, OriginTS: time.Now().UnixMilli(),
			Type: "m.room.member", StateKey: &k, Content: json.RawMessage(`{"membership":"join"}`), PrevEvents: []string{"$x"}, Depth: 5}
		if err := event.Seal(e); err != nil {
			t.Fatal(err)
		}
		sign(e)
		return e
	}
	wrongKey := forgedJoin(func(e *event.Event) {
		if err := event.Sign(e, globex.name, signatureKey(acme.key.KeyID), acme.key.Private); err != nil {
			t.Fatal(err)
		}
	})
	unsigned := forgedJoin(func(*event.Event) {})
	if !globex.svc.lostJoin(acme.name, wrongKey) || !globex.svc.lostJoin(acme.name, unsigned) {
		t.Fatal("the forged joins do not look like lost joins: the test tests nothing")
	}
	sendBesideForgeries(t, acme, globex, sink, room, alice, "forged-own-join-",
		[]forgery{{"signed with the peer's key", wrongKey}, {"unsigned", unsigned}})
	if globex.membership("!elsewhere:acme.test", bob) == state.Join {
		t.Error("bob is joined in the room of the forged joins")
	}
}

// dlqMessages takes every message of the DLQ on amqpURL, waiting until it holds n.
func dlqMessages(t *testing.T, amqpURL string, n int) []amqp091.Delivery {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var got []amqp091.Delivery
	waitFor(t, 15*time.Second, "the dead letters", func() bool {
		d, ok, err := ch.Get(QueueDLQ, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			got = append(got, d)
		}
		return len(got) >= n
	})
	return got
}

// TestRequestWithAForeignReplyToIsRefused: a request whose reply_to is not one of its origin's
// reply keys (ORG.reply.ID) is refused before it is acted on: dead-lettered with M_FORBIDDEN
// and logged, and a send_join in it commits nothing. Until 2026-12-07 it was answered (the join
// committed at the home org), the answer silently not sent, and the request acked: nothing
// logged, nothing dead-lettered, and the requester never learnt of the join.
func TestRequestWithAForeignReplyToIsRefused(t *testing.T) {
	amqpURL := testVhost(t)
	orgs := startTestOrgs(t, amqpURL, "acme.test", "globex.test")
	acme, globex := orgs["acme.test"], orgs["globex.test"]
	const alice, bob = "@alice:acme.test", "@bob:globex.test"
	globex.register(t, bob)
	room := acme.createRoom(t, alice, "public")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var tmpl makeJoinResult
	if err := globex.svc.call(ctx, acme.name, "make_join", makeJoinParams{Room: room, UserID: bob}, &tmpl); err != nil {
		t.Fatal(err)
	}
	k := bob
	join := &event.Event{RoomID: room, Sender: bob, Origin: globex.name, OriginTS: time.Now().UnixMilli(), Type: "m.room.member",
		StateKey: &k, Content: json.RawMessage(`{"membership":"join"}`), PrevEvents: tmpl.PrevEvents, Depth: tmpl.Depth}
	if err := event.Seal(join); err != nil {
		t.Fatal(err)
	}
	if err := globex.svc.opts.Keys.Sign(join, globex.name); err != nil {
		t.Fatal(err)
	}
	params, err := json.Marshal(sendJoinParams{Event: wirePDU(join)})
	if err != nil {
		t.Fatal(err)
	}
	replyTos := []string{"", globex.name, acme.name + ".reply.x", globex.name + ".replyx"}
	for _, replyTo := range replyTos {
		req := &Request{Type: TypeRequest, ReqID: randomID(), Origin: globex.name, Destination: acme.name,
			OriginTS: time.Now().UnixMilli(), Op: "send_join", Params: params}
		if err := signMessage(req, globex.name, globex.key); err != nil {
			t.Fatal(err)
		}
		body, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		publishRaw(t, amqpURL, acme.name, amqp091.Publishing{ContentType: "application/json", MessageId: req.ReqID, Type: TypeRequest,
			ReplyTo: replyTo, CorrelationId: req.ReqID, Body: body})
	}
	for _, d := range dlqMessages(t, amqpURL, len(replyTos)) {
		if reason, _ := d.Headers["x-parley-error"].(string); !strings.HasPrefix(reason, "M_FORBIDDEN: ") {
			t.Errorf("dead letter with reply_to %q: x-parley-error %q, want M_FORBIDDEN", d.ReplyTo, reason)
		}
	}
	if got := acme.membership(room, bob); got == state.Join {
		t.Errorf("acme committed the join of a request refused for its reply_to")
	}
}

// TestUnknownEDUIsLogged: an EDU of a type the contract does not name (m.typing, m.receipt,
// m.presence) is dropped and logged, and the transaction is still acked. Until 2026-12-07 it
// went without a trace.
func TestUnknownEDUIsLogged(t *testing.T) {
	amqpURL := testVhost(t)
	globexKey, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sink := &logSink{}
	s := &Service{opts: Options{Org: "acme.test", Peers: map[string]PeerKey{"globex.test": {KeyID: globexKey.KeyID,
		Public: globexKey.Private.Public().(ed25519.PublicKey)}}}, log: slog.New(slog.NewJSONHandler(sink, nil))}
	txn := &Transaction{Type: TypeTxn, TxnID: "edu-" + randomID(), Origin: "globex.test", Destination: "acme.test",
		OriginTS: time.Now().UnixMilli(), PDUs: []*event.Event{}, EDUs: []EDU{{Type: "m.bogus", Content: json.RawMessage(`{}`)}}}
	if err := signMessage(txn, txn.Origin, globexKey); err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(txn)
	if err != nil {
		t.Fatal(err)
	}
	if got := deliverOnce(t, amqpURL, body, func(d amqp091.Delivery) { s.handleTxn(context.Background(), nil, d) }); got != acked {
		t.Fatalf("a transaction with an unknown EDU: %s, want acked", got)
	}
	for _, rec := range sink.records(t) {
		if rec["msg"] == "federation: EDU dropped" && rec["type"] == "m.bogus" && rec["origin"] == "globex.test" {
			return
		}
	}
	t.Fatalf("the unknown EDU was not logged: %v", sink.records(t))
}

// TestForgedEventOfAnUnknownRoomIsDroppedAtOnce: an event of a room of the sending org that this
// org does not know yet is worth waiting for (requeued: most likely a room being joined right
// now) only if it is the origin's: a forged one (signed with another key, or with a content
// hash that does not match) is dropped and logged at once, and the valid event beside it is
// applied without delay. Until 2026-12-07 it was requeued 10 times before its signature was
// checked, holding the transaction worker for every org.
func TestForgedEventOfAnUnknownRoomIsDroppedAtOnce(t *testing.T) {
	acme, globex, sink, room := startForgeryScene(t)
	const alice = forgeryAlice

	elsewhere := &state.Room{RoomID: "!elsewhere:acme.test", LastEventID: "$x", Depth: 4}
	wrongKey := acme.newEvent(t, elsewhere, alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "not acme's"})
	if err := event.Sign(wrongKey, acme.name, signatureKey(acme.key.KeyID), globex.key.Private); err != nil {
		t.Fatal(err)
	}
	tampered := acme.newEvent(t, elsewhere, alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "signed"})
	if err := acme.svc.opts.Keys.Sign(tampered, acme.name); err != nil {
		t.Fatal(err)
	}
	tampered.Content = json.RawMessage(`{"msgtype":"m.text","body":"changed after signing"}`)
	for _, e := range []*event.Event{wrongKey, tampered} {
		if !globex.svc.awaitingRoom(e) {
			t.Fatal("the forged events' room is known on globex: the test tests nothing")
		}
	}
	sendBesideForgeries(t, acme, globex, sink, room, alice, "forged-unknown-room-",
		[]forgery{{"signed with another key", wrongKey}, {"changed after signing", tampered}})
}

// forgery is a forged event a test sends, with what is wrong with it.
type forgery struct {
	name string
	e    *event.Event
}

// sendBesideForgeries publishes to globex, in one transaction of acme's, the forged events and a
// valid message of alice's in room, on the room as globex holds it. The valid one must be
// applied; each forged one logged as dropped (and not stored); nothing else logged about the
// transaction (a requeue, a recovery).
func sendBesideForgeries(t *testing.T, acme, globex *testOrg, sink *logSink, room, alice, txnPrefix string, forged []forgery) {
	t.Helper()
	r, _ := acme.store().Room(room)
	waitFor(t, 15*time.Second, "globex to hold acme's latest event", func() bool { return globex.has(r.LastEventID) })
	valid := acme.newEvent(t, r, alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "beside the forgeries"})
	if err := acme.svc.opts.Keys.Sign(valid, acme.name); err != nil {
		t.Fatal(err)
	}
	pdus := make([]*event.Event, 0, len(forged)+1)
	for _, f := range forged {
		pdus = append(pdus, f.e)
	}
	txnID := txnPrefix + randomID()
	publishTxn(t, acme.svc.opts.AMQPURL, acme.key, &Transaction{Type: TypeTxn, TxnID: txnID, Origin: acme.name, Destination: globex.name,
		OriginTS: time.Now().UnixMilli(), PDUs: append(pdus, valid), EDUs: []EDU{}})
	waitFor(t, 20*time.Second, "the valid event on globex", func() bool { return globex.has(valid.EventID) })

	dropped, other := map[string]bool{}, map[string]int{}
	for _, rec := range sink.records(t) {
		if rec["txn_id"] != txnID {
			continue
		}
		if msg, _ := rec["msg"].(string); msg == "federation: event dropped" {
			id, _ := rec["event_id"].(string)
			dropped[id] = true
		} else {
			other[msg]++
		}
	}
	if len(other) > 0 {
		t.Errorf("globex logged about the transaction %v (message: count), want only the forged events dropped", other)
	}
	for _, f := range forged {
		if !dropped[f.e.EventID] {
			t.Errorf("the forged event %s was not logged as dropped", f.name)
		}
		if globex.has(f.e.EventID) {
			t.Errorf("the forged event %s was stored", f.name)
		}
	}
}

// The users of startForgeryScene: alice of acme, bob of globex.
const forgeryAlice, forgeryBob = "@alice:acme.test", "@bob:globex.test"

// startForgeryScene starts acme and globex (globex logging to sink), with acme's public room
// that globex's bob has joined: where the forgery tests send their forged events.
func startForgeryScene(t *testing.T) (acme, globex *testOrg, sink *logSink, room string) {
	t.Helper()
	amqpURL := testVhost(t)
	sink = &logSink{}
	orgs := startTestOrgsWith(t, amqpURL, logsTo("globex.test", sink), "acme.test", "globex.test")
	acme, globex = orgs["acme.test"], orgs["globex.test"]
	globex.register(t, forgeryBob)
	room = acme.createRoom(t, forgeryAlice, "public")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := globex.svc.Join(ctx, forgeryBob, room); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "bob joined on globex", func() bool { return globex.membership(room, forgeryBob) == state.Join })
	return acme, globex, sink, room
}
