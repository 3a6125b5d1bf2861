package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node/client"
)

// bfPage is one history page: its events and its start token ("" on the last page).
func bfPage(t *testing.T, c *client.Conn, room, before string, limit int) ([]client.Frame, string) {
	t.Helper()
	req := client.Frame{"op": "history", "room_id": room, "limit": limit}
	if before != "" {
		req["before"] = before
	}
	r := must(t, c, req)
	var page []client.Frame
	for _, e := range r["events"].([]any) {
		page = append(page, e.(map[string]any))
	}
	start, _ := r["start"].(string)
	return page, start
}

// bfPageAll pages back from before to the beginning and returns the events oldest first, and
// the tokens used.
func bfPageAll(t *testing.T, c *client.Conn, room, before string, limit int) ([]client.Frame, []string) {
	t.Helper()
	var out []client.Frame
	var tokens []string
	for i := 0; ; i++ {
		if i > 100 {
			t.Fatalf("history did not end after 100 pages (tokens %q)", tokens)
		}
		page, start := bfPage(t, c, room, before, limit)
		out = append(page, out...)
		if start == "" {
			return out, tokens
		}
		tokens = append(tokens, start)
		before = start
	}
}

func bfMessages(events []client.Frame) []string {
	var out []string
	for _, e := range events {
		if e["type"] == "m.room.message" {
			out = append(out, bodyOf(e))
		}
	}
	return out
}

func bfSendMany(t *testing.T, c *client.Conn, room string, n int) []string {
	t.Helper()
	var want []string
	for i := 0; i < n; i++ {
		body := fmt.Sprintf("old message %03d", i)
		if _, err := c.Send(ctx(t), room, fmt.Sprintf("bf%d", i), body); err != nil {
			t.Fatal(err)
		}
		want = append(want, body)
	}
	return want
}

func hasBackfillToken(tokens []string) bool {
	for _, tok := range tokens {
		if strings.HasPrefix(tok, "b$") {
			return true
		}
	}
	return false
}

// TestFederationBackfillHistoryBeforeJoin: acme's room has 120 messages when bob of globex joins
// it. globex receives only the room's state and its 50 most recent events; paging back, bob's
// history goes on through `backfill` from acme and gives every message once, in order, down to
// the room's creation: the same events, in the same order, as acme's own history.
func TestFederationBackfillHistoryBeforeJoin(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "alias": "archive", "visibility": "public", "name": "Archive"})["room_id"].(string)
	want := bfSendMany(t, alice, room, 120)
	must(t, bob, client.Frame{"op": "join", "room": "#archive:acme.test"})

	// Small pages: several backfill round trips, and the switch from stored events to backfill.
	got, tokens := bfPageAll(t, bob, room, "", 30)
	if !hasBackfillToken(tokens) {
		t.Errorf("no backfill token among %q", tokens)
	}
	if msgs := bfMessages(got); strings.Join(msgs, "|") != strings.Join(want, "|") {
		t.Fatalf("bob's history has %d messages, want the %d in order:\n%q", len(msgs), len(want), msgs)
	}
	if len(got) == 0 || got[0]["type"] != "m.room.create" {
		t.Fatalf("bob's history does not start with m.room.create: %v", got[:min(len(got), 1)])
	}
	seen := map[string]bool{}
	for _, e := range got {
		id := e["event_id"].(string)
		if seen[id] {
			t.Fatalf("event %s (%v) twice in bob's history", id, e["type"])
		}
		seen[id] = true
	}
	home := allEvents(t, alice, room)
	if strings.Join(ids(got), ",") != strings.Join(ids(home), ",") {
		t.Fatalf("bob's history (%d events) differs from acme's (%d events)", len(got), len(home))
	}
	// The default client pager (limit 100) gets the same.
	if full := allEvents(t, bob, room); strings.Join(ids(full), ",") != strings.Join(ids(home), ",") {
		t.Fatalf("allEvents on globex: %d events, acme has %d", len(full), len(home))
	}

	// A fresh sync shows the recent events as limited, with a start token that pages on through
	// backfill, not the events before the gap as if they were the beginning.
	fresh := dial(t, globex.node, register(t, globex.node, "bob2"))
	must(t, fresh, client.Frame{"op": "join", "room": room})
	synced := must(t, fresh, client.Frame{"op": "sync"})["rooms"].(map[string]any)[room].(map[string]any)
	start, _ := synced["start"].(string)
	if synced["limited"] != true || start == "" {
		t.Fatalf("sync of the joined room: limited %v start %q", synced["limited"], start)
	}
	var recent []client.Frame
	for _, e := range synced["events"].([]any) {
		recent = append(recent, e.(map[string]any))
	}
	older, _ := bfPageAll(t, fresh, room, start, 50)
	all := append(older, recent...)
	if msgs := bfMessages(all); strings.Join(msgs, "|") != strings.Join(want, "|") {
		t.Fatalf("sync then history: %d messages, want %d in order", len(msgs), len(want))
	}
	if all[0]["type"] != "m.room.create" {
		t.Fatalf("sync then history does not start with m.room.create")
	}
}

// TestFederationBackfillUntrustedAnswers: globex's backfill requests reach a fake acme (the
// test, holding acme's signing key, consuming acme's inbox after acme stopped). First nobody
// answers: history ends at the stored events without an error, and globex logs it. Then the
// fake answers with acme's real events, some tampered with and one forged: those are dropped,
// the rest reach bob.
func TestFederationBackfillUntrustedAnswers(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "alias": "lies", "visibility": "public"})["room_id"].(string)
	want := bfSendMany(t, alice, room, 70)
	must(t, bob, client.Frame{"op": "join", "room": room})
	var real []*event.Event
	for _, f := range allEvents(t, alice, room) {
		raw, _ := json.Marshal(f)
		var e event.Event
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		real = append(real, &e)
	}
	if code := acme.node.stop(); code != 0 {
		t.Fatalf("acme exited %d", code)
	}

	recent, start := bfPage(t, bob, room, "", 100)
	if !strings.HasPrefix(start, "b$") {
		t.Fatalf("the first page's start token is %q, want a backfill token", start)
	}
	// acme is down: no error, history goes on with what globex stores (the room's first state
	// events) and ends.
	began := time.Now()
	stored, more := bfPage(t, bob, room, start, 100)
	if more != "" || len(stored) == 0 || stored[0]["type"] != "m.room.create" || len(bfMessages(stored)) != 0 {
		t.Fatalf("with acme down: %d events (start %q), want the stored state events only", len(stored), more)
	}
	if d := time.Since(began); d > 20*time.Second {
		t.Errorf("the unanswered backfill took %v", d)
	}
	// The node's output reaches the test through a pipe: give the line a moment to arrive.
	logged := false
	for deadline := time.Now().Add(5 * time.Second); !logged && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		logged = strings.Contains(globex.node.logs(), "backfill from the home org failed")
	}
	if !logged {
		t.Error("globex did not log the failed backfill")
	}

	// Acme's events before the boundary, as the fake acme serves them: one tampered with after
	// signing, one re-signed with a forged key, and an invented one signed with that key.
	_, forgedPriv, _ := ed25519.GenerateKey(rand.Reader)
	byID := map[string]int{}
	for i, e := range real {
		byID[e.EventID] = i
	}
	boundary := strings.TrimPrefix(start, "b")
	cut, ok := byID[boundary]
	if !ok || cut < 20 {
		t.Fatalf("the backfill token names %s, not one of acme's events far enough in", boundary)
	}
	served := make([]*event.Event, 0, cut+1)
	tampered, forged := map[string]bool{}, map[string]bool{}
	for i, e := range real[:cut] {
		c := e.Clone()
		c.StreamPos, c.Unsigned = 0, nil
		// Signed with acme's key, as acme signs its events on the way out (alice sees them
		// unsigned: the org key signs only what leaves the org).
		if err := event.Sign(c, "acme.test", "ed25519:"+acme.keyRaw.KeyID, acme.keyRaw.Private); err != nil {
			t.Fatal(err)
		}
		switch {
		case c.Type == "m.room.message" && i == cut-5:
			c.Content = json.RawMessage(`{"body":"tampered","msgtype":"m.text"}`)
			tampered[bodyOf(frameOf(t, e))] = true
		case c.Type == "m.room.message" && i == cut-9:
			c.Signatures = nil
			if err := event.Sign(c, "acme.test", "ed25519:"+acme.keyRaw.KeyID, forgedPriv); err != nil {
				t.Fatal(err)
			}
			forged[bodyOf(frameOf(t, e))] = true
		}
		served = append(served, c)
	}
	if len(tampered) != 1 || len(forged) != 1 {
		t.Fatalf("the test picked no message to tamper with (%v) or forge (%v)", tampered, forged)
	}
	invented := &event.Event{RoomID: room, Sender: "@alice:acme.test", Origin: "acme.test", OriginTS: time.Now().UnixMilli(),
		Type: "m.room.message", Content: json.RawMessage(`{"body":"invented","msgtype":"m.text"}`),
		PrevEvents: []string{served[len(served)-1].EventID}, Depth: served[len(served)-1].Depth + 1}
	if err := event.Seal(invented); err != nil {
		t.Fatal(err)
	}
	if err := event.Sign(invented, "acme.test", "ed25519:"+acme.keyRaw.KeyID, forgedPriv); err != nil {
		t.Fatal(err)
	}
	served = append(served, invented)
	stop := fakeBackfillHome(t, vhost, acme.keyRaw, served)
	defer stop()

	older, more := bfPage(t, bob, room, start, 100)
	if more != "" {
		t.Fatalf("the fake acme's answer reaches back to the creation, yet start is %q", more)
	}
	if older[0]["type"] != "m.room.create" {
		t.Fatalf("the backfilled page starts with %v", older[0]["type"])
	}
	var expect []string
	for _, b := range want {
		if !tampered[b] && !forged[b] {
			expect = append(expect, b)
		}
	}
	got := append(bfMessages(older), bfMessages(recent)...)
	if strings.Join(got, "|") != strings.Join(expect, "|") {
		t.Fatalf("bob's history with a lying home org:\n got %q\nwant %q", got, expect)
	}
	n := 0
	for deadline := time.Now().Add(5 * time.Second); n < 3 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		n = strings.Count(globex.node.logs(), "federation: event of an answer dropped\" component=federation op=backfill")
	}
	if n != 3 {
		t.Errorf("globex logged %d dropped backfilled events, want 3", n)
	}
}

func frameOf(t *testing.T, e *event.Event) client.Frame {
	t.Helper()
	raw, _ := json.Marshal(e)
	var f client.Frame
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// fakeBackfillHome consumes acme's inbox and answers every backfill request, signed with acme's
// key, with the events of events before the one asked about (up to the limit).
func fakeBackfillHome(t *testing.T, vhost string, key *federation.SigningKey, events []*event.Event) func() {
	t.Helper()
	conn, err := amqp091.Dial(vhost)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(federation.InboxQueue("acme.test"), "", false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range deliveries {
			_ = d.Ack(false)
			req, err := federation.DecodeRequest(d.Body)
			if err != nil || req.Op != "backfill" {
				continue
			}
			var p struct {
				RoomID   string   `json:"room_id"`
				EventIDs []string `json:"event_ids"`
				Limit    int      `json:"limit"`
			}
			if json.Unmarshal(req.Params, &p) != nil || len(p.EventIDs) == 0 {
				continue
			}
			end := len(events)
			for i, e := range events {
				if e.EventID == p.EventIDs[0] {
					end = i
				}
			}
			page := events[max(0, end-p.Limit):end]
			result, _ := json.Marshal(map[string]any{"events": page})
			resp := &federation.Response{Type: federation.TypeResponse, ReqID: req.ReqID, Origin: "acme.test",
				Destination: req.Origin, Result: result}
			unsigned, _ := json.Marshal(resp)
			canonical, err := event.Canonical(unsigned)
			if err != nil {
				t.Error(err)
				continue
			}
			sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(key.Private, canonical))
			resp.Signatures = map[string]map[string]string{"acme.test": {"ed25519:" + key.KeyID: sig}}
			body, _ := json.Marshal(resp)
			_ = ch.Publish(federation.ExchangeFederation, d.ReplyTo, false, false, amqp091.Publishing{
				ContentType: "application/json", CorrelationId: d.CorrelationId, Type: federation.TypeResponse, Body: body})
		}
	}()
	return func() {
		conn.Close()
		<-done
	}
}
