package main

import (
	"bufio"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node/client"
)

// State changes of a room are authorized and ordered by its home org (amqp.md): a user of
// globex.test changing the state of a room of acme.test asks acme.test (send_state), and
// nothing is committed anywhere until acme.test has accepted the change.

// sharedRoom is a public room of acme.test that bob of globex.test has joined, with a message
// relayed each way so both relays are known to work.
type sharedRoom struct {
	acme, globex *org
	alice, bob   *client.Conn
	aliceToken   string
	room         string
	vhost        string // AMQP URL of the orgs' vhost
}

func startSharedRoom(t *testing.T) *sharedRoom {
	t.Helper()
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	sr := &sharedRoom{acme: orgs[0], globex: orgs[1], vhost: vhost}
	sr.aliceToken = register(t, sr.acme.node, "alice")
	sr.alice = dial(t, sr.acme.node, sr.aliceToken)
	sr.bob = dial(t, sr.globex.node, register(t, sr.globex.node, "bob"))
	sr.room = must(t, sr.alice, client.Frame{"op": "create_room", "alias": "general", "visibility": "public"})["room_id"].(string)
	must(t, sr.bob, client.Frame{"op": "join", "room": "#general:acme.test"})
	if _, err := sr.alice.Send(ctx(t), sr.room, "w1", "warm up from acme"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, sr.bob, "warm up from acme")
	if _, err := sr.bob.Send(ctx(t), sr.room, "w2", "warm up from globex"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, sr.alice, "warm up from globex")
	return sr
}

// givePower makes alice set the room's power levels with bob at 50 (enough for state events).
func (sr *sharedRoom) givePower(t *testing.T) {
	t.Helper()
	must(t, sr.alice, client.Frame{"op": "set_state", "room_id": sr.room, "type": "m.room.power_levels",
		"content": client.Frame{"users": client.Frame{"@alice:acme.test": 100, "@bob:globex.test": 50},
			"state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0, "events_default": 0, "users_default": 0}})
}

// refused sends f and expects an error reply, which it returns.
func refused(t *testing.T, c *client.Conn, f client.Frame) *client.Error {
	t.Helper()
	_, err := c.Request(ctx(t), f)
	var ce *client.Error
	if !errors.As(err, &ce) {
		t.Fatalf("%v: want an error reply, got %v", f["op"], err)
	}
	return ce
}

// eventsOfType is the ids of the events of type typ in a room's history on c's node.
func eventsOfType(t *testing.T, c *client.Conn, room, typ string) []string {
	t.Helper()
	var out []string
	for _, e := range allEvents(t, c, room) {
		if e["type"] == typ {
			out = append(out, e["event_id"].(string))
		}
	}
	return out
}

// roomSummary is the caller's entry of room in the rooms op, or nil.
func roomSummary(t *testing.T, c *client.Conn, room string) map[string]any {
	t.Helper()
	for _, r := range must(t, c, client.Frame{"op": "rooms"})["rooms"].([]any) {
		if m := r.(map[string]any); m["room_id"] == room {
			return m
		}
	}
	return nil
}

// logged waits (bounded) for a line with substr in p's log: the log is copied from the
// process's pipe asynchronously, so it may trail the replies a little.
func logged(p *proc, substr string) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(p.logs(), substr) {
			return true
		}
	}
	return false
}

// metricValue reads one series (name, with its labels if any) from a node's /metrics.
func metricValue(t *testing.T, p *proc, series string) float64 {
	t.Helper()
	v, ok := readMetric(t, p, series)
	if !ok {
		t.Fatalf("metric %s not found on %s", series, p.id)
	}
	return v
}

// readMetric reads one series from a node's /metrics, if it is there.
func readMetric(t *testing.T, p *proc, series string) (float64, bool) {
	t.Helper()
	resp, err := httpClient.Get(p.base() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return f, true
		}
	}
	return 0, false
}

// TestFederationStateTopicThroughHome: bob of globex.test, given power by alice in acme.test's
// room, sets the topic. acme.test authorizes and commits it, globex.test commits the accepted
// event: both orgs show the same topic, as the same event.
func TestFederationStateTopicThroughHome(t *testing.T) {
	sr := startSharedRoom(t)
	sr.givePower(t)
	// Right away: globex.test may not have the new power levels yet, and it does not need
	// them, since acme.test decides.
	res := must(t, sr.bob, client.Frame{"op": "set_state", "room_id": sr.room, "type": "m.room.topic",
		"content": client.Frame{"topic": "set by bob"}})
	id, _ := res["event_id"].(string)
	if !strings.HasPrefix(id, "$") {
		t.Fatalf("set_state answered %v", res)
	}
	if !logged(sr.globex.node, "state change accepted by the home org") {
		t.Error("globex.test did not send the change to acme.test")
	}
	// Committed on globex.test before the ok.
	if s := roomSummary(t, sr.bob, sr.room); s == nil || s["topic"] != "set by bob" {
		t.Fatalf("globex.test's room right after the ok: %v", s)
	}
	got := waitEvent(t, sr.alice, "bob's topic on acme.test", func(e client.Frame) bool { return e["type"] == "m.room.topic" })
	if got["event_id"] != id || got["sender"] != "@bob:globex.test" || got["origin"] != "globex.test" {
		t.Fatalf("acme.test got %v, want event %s by bob", got, id)
	}
	if s := roomSummary(t, sr.alice, sr.room); s == nil || s["topic"] != "set by bob" {
		t.Fatalf("acme.test's room: %v", s)
	}
	// The same single topic event on both orgs, also after the home org's relay has brought
	// it back to globex.test (a duplicate, skipped).
	if _, err := sr.alice.Send(ctx(t), sr.room, "after", "after the topic"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, sr.bob, "after the topic")
	for name, c := range map[string]*client.Conn{"acme.test": sr.alice, "globex.test": sr.bob} {
		if ids := eventsOfType(t, c, sr.room, "m.room.topic"); len(ids) != 1 || ids[0] != id {
			t.Errorf("%s has topic events %v, want [%s]", name, ids, id)
		}
	}
}

// TestFederationStateRefusedByHome: bob has no power to set the topic. acme.test refuses with
// M_FORBIDDEN, the op fails with that code, and neither org commits anything.
func TestFederationStateRefusedByHome(t *testing.T) {
	sr := startSharedRoom(t)
	ce := refused(t, sr.bob, client.Frame{"op": "set_state", "room_id": sr.room, "type": "m.room.topic",
		"content": client.Frame{"topic": "not allowed"}})
	if ce.Code != "M_FORBIDDEN" || !strings.Contains(ce.Message, "acme.test") {
		t.Fatalf("set_state refused with %v, want M_FORBIDDEN from acme.test", ce)
	}
	if !logged(sr.acme.node, "state change refused by room rules") {
		t.Error("acme.test did not log the refusal: the refusal did not come from the home org")
	}
	// A kick without power is the home org's refusal too.
	ce = refused(t, sr.bob, client.Frame{"op": "kick", "room_id": sr.room, "user_id": "@alice:acme.test"})
	if ce.Code != "M_FORBIDDEN" || !strings.Contains(ce.Message, "acme.test") {
		t.Fatalf("kick refused with %v, want M_FORBIDDEN from acme.test", ce)
	}
	// Let anything in flight land, then look: nothing on either org.
	if _, err := sr.alice.Send(ctx(t), sr.room, "after", "after the refusal"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, sr.bob, "after the refusal")
	for name, c := range map[string]*client.Conn{"acme.test": sr.alice, "globex.test": sr.bob} {
		if ids := eventsOfType(t, c, sr.room, "m.room.topic"); len(ids) != 0 {
			t.Errorf("%s has topic events %v", name, ids)
		}
		if s := roomSummary(t, c, sr.room); s == nil || s["topic"] != "" {
			t.Errorf("%s's room: %v", name, s)
		}
	}
}

// TestFederationStateLeaveThroughHome: bob leaves acme.test's room. acme.test records the leave,
// and stops relaying the room to globex.test, which has no member left in it.
func TestFederationStateLeaveThroughHome(t *testing.T) {
	sr := startSharedRoom(t)
	// dave of globex.test is in another room of acme.test: a marker sent there after a
	// message in bob's room shows the relay to globex.test has passed that message.
	dave := dial(t, sr.globex.node, register(t, sr.globex.node, "dave"))
	other := must(t, sr.alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, dave, client.Frame{"op": "join", "room": other})

	must(t, sr.bob, client.Frame{"op": "leave", "room_id": sr.room})
	found := false
	for _, m := range must(t, sr.alice, client.Frame{"op": "members", "room_id": sr.room})["members"].([]any) {
		if row := m.(map[string]any); row["user_id"] == "@bob:globex.test" {
			found = true
			if row["membership"] != "leave" {
				t.Fatalf("bob on acme.test right after his leave: %v", row)
			}
		}
	}
	if !found {
		t.Fatal("acme.test does not list bob at all")
	}
	if !logged(sr.globex.node, "state change accepted by the home org") {
		t.Error("globex.test did not send the leave to acme.test")
	}
	if s := roomSummary(t, sr.bob, sr.room); s != nil {
		t.Fatalf("globex.test still lists the room for bob: %v", s)
	}

	// The leave's return from acme.test is a duplicate on globex.test; wait for quiet.
	before := metricValue(t, sr.globex.node, "parley_events_committed_total")
	for deadline := time.Now().Add(10 * time.Second); ; {
		time.Sleep(time.Second)
		now := metricValue(t, sr.globex.node, "parley_events_committed_total")
		if now == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("globex.test keeps committing events (%v -> %v)", before, now)
		}
		before = now
	}
	if _, err := sr.alice.Send(ctx(t), sr.room, "gone", "bob has left"); err != nil {
		t.Fatal(err)
	}
	if _, err := sr.alice.Send(ctx(t), other, "marker", "marker"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, dave, "marker")
	// Only the marker reached globex.test.
	if after := metricValue(t, sr.globex.node, "parley_events_committed_total"); after != before+1 {
		t.Fatalf("globex.test committed %v events since the leave, want only the marker", after-before)
	}
}

// TestFederationStateHomeUnreachable: with acme.test's node stopped, bob's set_state fails with
// M_UNAVAILABLE and nothing is committed, on globex.test nor (once back) on acme.test.
func TestFederationStateHomeUnreachable(t *testing.T) {
	sr := startSharedRoom(t)
	sr.givePower(t) // so that only acme.test's absence can stop the change
	waitEvent(t, sr.bob, "the power levels on globex.test", func(e client.Frame) bool { return e["type"] == "m.room.power_levels" })
	if code := sr.acme.node.stop(); code != 0 {
		t.Fatalf("acme.test exited %d", code)
	}
	start := time.Now()
	ce := refused(t, sr.bob, client.Frame{"op": "set_state", "room_id": sr.room, "type": "m.room.topic",
		"content": client.Frame{"topic": "while acme is down"}})
	if ce.Code != "M_UNAVAILABLE" {
		t.Fatalf("set_state refused with %v, want M_UNAVAILABLE", ce)
	}
	t.Logf("M_UNAVAILABLE after %v: %s", time.Since(start).Round(time.Millisecond), ce.Message)
	if ids := eventsOfType(t, sr.bob, sr.room, "m.room.topic"); len(ids) != 0 {
		t.Fatalf("globex.test committed topic events %v", ids)
	}
	if s := roomSummary(t, sr.bob, sr.room); s == nil || s["topic"] != "" {
		t.Fatalf("globex.test's room: %v", s)
	}

	// The request waits in acme.test's inbox, but it has expired by now: acme.test must not act
	// on it when it comes back.
	sr.acme.node.start()
	waitLeader(t, sr.acme.node)
	alice := dial(t, sr.acme.node, sr.aliceToken)
	if _, err := alice.Send(ctx(t), sr.room, "back", "acme is back"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, sr.bob, "acme is back")
	time.Sleep(2 * time.Second)
	for name, c := range map[string]*client.Conn{"acme.test": alice, "globex.test": sr.bob} {
		if ids := eventsOfType(t, c, sr.room, "m.room.topic"); len(ids) != 0 {
			t.Errorf("%s has topic events %v", name, ids)
		}
	}
	// And the path works again.
	res := must(t, sr.bob, client.Frame{"op": "set_state", "room_id": sr.room, "type": "m.room.topic",
		"content": client.Frame{"topic": "acme is back"}})
	waitEvent(t, alice, "bob's topic on acme.test", func(e client.Frame) bool {
		return e["type"] == "m.room.topic" && e["event_id"] == res["event_id"]
	})
}

// TestFederationStateKeepsTheHomeOrgsOrder: acme.test's relay to globex.test is held up (the
// inbox queue unbound for a moment, so acme.test's outbox retries), alice sets the topic, then
// bob of globex.test sets it. acme.test orders bob's change after alice's, and its answer to
// bob travels on the request's reply queue, ahead of the held-up relay. globex.test must commit
// bob's change in the order of acme.test's relay, not when the answer arrives: committed from
// the answer, alice's older topic arrived after it and won on globex.test for good. Meanwhile
// acme.test's parley_federation_queue_depth shows the events waiting for globex.test, and 0
// once they are through.
func TestFederationStateKeepsTheHomeOrgsOrder(t *testing.T) {
	sr := startSharedRoom(t)
	sr.givePower(t)
	ch := amqpChannel(t, sr.vhost)
	inbox, exchange, key := federation.InboxQueue("globex.test"), federation.ExchangeFederation, "globex.test"
	if err := ch.QueueUnbind(inbox, key, exchange, nil); err != nil {
		t.Fatal(err)
	}
	must(t, sr.alice, client.Frame{"op": "set_state", "room_id": sr.room, "type": "m.room.topic",
		"content": client.Frame{"topic": "alice, first"}})
	const depth = `parley_federation_queue_depth{peer="globex.test"}`
	waitMetric(t, sr.acme.node, depth, func(v float64) bool { return v >= 1 }, "at least 1 while the relay is held up")
	rebound := make(chan error, 1)
	go func() {
		time.Sleep(1500 * time.Millisecond) // bob's change is answered meanwhile
		rebound <- ch.QueueBind(inbox, key, exchange, false, nil)
	}()
	must(t, sr.bob, client.Frame{"op": "set_state", "room_id": sr.room, "type": "m.room.topic",
		"content": client.Frame{"topic": "bob, last"}})
	if err := <-rebound; err != nil {
		t.Fatal(err)
	}
	if _, err := sr.alice.Send(ctx(t), sr.room, "marker", "after both topics"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, sr.bob, "after both topics") // globex.test has applied everything before it
	waitMetric(t, sr.acme.node, depth, func(v float64) bool { return v == 0 }, "0 once the relay is through")
	for name, c := range map[string]*client.Conn{"acme.test": sr.alice, "globex.test": sr.bob} {
		if s := roomSummary(t, c, sr.room); s == nil || s["topic"] != "bob, last" {
			t.Errorf("%s's topic at the end: %v, want bob's", name, s["topic"])
		}
	}
}

// waitMetric waits (bounded) until the series on p's /metrics satisfies ok.
func waitMetric(t *testing.T, p *proc, series string, ok func(float64) bool, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, found := readMetric(t, p, series)
		if found && ok(v) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s on %s: %v (found %v), want %s", series, p.id, v, found, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
