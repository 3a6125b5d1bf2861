package main

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node/client"
)

// Step 2 of a receiving org's checks (amqp.md) is per PDU: in a transaction whose own
// signature is good, an event that fails a check is dropped and logged, and the other events
// of the transaction are applied. These tests publish such transactions, signed with acme's
// key, straight into globex's inbox.

// pduRig is a public room of acme.test shared with globex.test (bob) and initech.test (carol),
// with dave, an acme user without power, joined too, and a room of globex.test that does not
// federate. Transactions are published into globex's inbox as acme.
type pduRig struct {
	acme, globex, initech *org
	bob                   *client.Conn
	room, lonely          string
	ch                    *amqp091.Channel
}

func startPDURig(t *testing.T) *pduRig {
	t.Helper()
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test", "initech.test")
	r := &pduRig{acme: orgs[0], globex: orgs[1], initech: orgs[2]}
	alice := dial(t, r.acme.node, register(t, r.acme.node, "alice"))
	dave := dial(t, r.acme.node, register(t, r.acme.node, "dave"))
	r.bob = dial(t, r.globex.node, register(t, r.globex.node, "bob"))
	carol := dial(t, r.initech.node, register(t, r.initech.node, "carol"))
	r.room = must(t, alice, client.Frame{"op": "create_room", "alias": "pdus", "visibility": "public"})["room_id"].(string)
	must(t, r.bob, client.Frame{"op": "join", "room": "#pdus:acme.test"})
	must(t, dave, client.Frame{"op": "join", "room": r.room})
	must(t, carol, client.Frame{"op": "join", "room": "#pdus:acme.test"})
	if _, err := alice.Send(ctx(t), r.room, "w", "warm up"); err != nil {
		t.Fatal(err)
	}
	waitHistory(t, r.bob, r.room, "warm up")
	// globex must know dave and carol as joined members, or the room rules there would refuse
	// their events for that reason alone.
	waitUntil(t, time.Now().Add(30*time.Second), "dave and carol joined at globex", func() bool {
		joined := map[string]bool{}
		for _, m := range must(t, r.bob, client.Frame{"op": "members", "room_id": r.room})["members"].([]any) {
			row := m.(map[string]any)
			if row["membership"] == state.Join {
				joined[row["user_id"].(string)] = true
			}
		}
		return joined["@dave:acme.test"] && joined["@carol:initech.test"]
	})
	r.lonely = must(t, r.bob, client.Frame{"op": "create_room", "visibility": "public", "federate": false})["room_id"].(string)
	r.ch = amqpChannel(t, vhost)
	if err := r.ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	return r
}

// head is the last event of the room's history at globex, and its depth: what fabricated
// events build on (so globex has every prev_event and fetches nothing).
func (r *pduRig) head(t *testing.T) (string, int64) {
	t.Helper()
	h := allEvents(t, r.bob, r.room)
	last := h[len(h)-1]
	depth, _ := last["depth"].(float64)
	return last["event_id"].(string), int64(depth)
}

// pduSpec describes one event to build.
type pduSpec struct {
	room, sender, typ string
	stateKey          *string
	content           any
	redacts           string
	prev              string
	depth             int64
}

// build seals e and signs it as its sender's org with key (the org's real key, or not).
func (r *pduRig) build(t *testing.T, s pduSpec, key *federation.SigningKey) *event.Event {
	t.Helper()
	raw, err := event.CanonicalValue(s.content)
	if err != nil {
		t.Fatal(err)
	}
	origin := s.sender[strings.IndexByte(s.sender, ':')+1:]
	e := &event.Event{RoomID: s.room, Sender: s.sender, Origin: origin, OriginTS: time.Now().UnixMilli(),
		Type: s.typ, StateKey: s.stateKey, Content: raw, Redacts: s.redacts, PrevEvents: []string{s.prev}, Depth: s.depth}
	if err := event.Seal(e); err != nil {
		t.Fatal(err)
	}
	if key != nil {
		if err := event.Sign(e, origin, "ed25519:"+key.KeyID, key.Private); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// message builds a correctly signed m.room.message of sender (of acme or initech) on the head.
func (r *pduRig) message(t *testing.T, room, sender, body string) *event.Event {
	t.Helper()
	prev, depth := r.head(t)
	return r.build(t, pduSpec{room: room, sender: sender, typ: "m.room.message", prev: prev, depth: depth + 1,
		content: map[string]any{"msgtype": "m.text", "body": body}}, r.keyOf(sender))
}

func (r *pduRig) keyOf(sender string) *federation.SigningKey {
	switch {
	case strings.HasSuffix(sender, ":acme.test"):
		return r.acme.keyRaw
	case strings.HasSuffix(sender, ":initech.test"):
		return r.initech.keyRaw
	}
	return r.globex.keyRaw
}

// send publishes one transaction of pdus from acme.test to globex's inbox, signed with acme's
// real key, and waits for the broker's confirm.
func (r *pduRig) send(t *testing.T, pdus ...*event.Event) {
	t.Helper()
	txnID := "pdu-" + randomSuffix()
	body, err := federation.EncodeSignedTransaction("acme.test", "globex.test", txnID, r.acme.keyRaw, pdus)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := r.ch.PublishWithDeferredConfirmWithContext(ctx(t), federation.ExchangeFederation, "globex.test", false, false,
		amqp091.Publishing{ContentType: "application/json", DeliveryMode: 2, Type: federation.TypeTxn, MessageId: txnID, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(ctx(t)); err != nil || !ok {
		t.Fatalf("publish not confirmed: %v", err)
	}
}

// arrived waits until every event of good is in the room's history at globex (the events of
// one transaction are committed in one batch: once they are there, the transaction was
// handled) and returns the history by event id.
func (r *pduRig) arrived(t *testing.T, room string, good ...*event.Event) map[string]client.Frame {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		byID := map[string]client.Frame{}
		for _, e := range allEvents(t, r.bob, room) {
			byID[e["event_id"].(string)] = e
		}
		var missing []string
		for _, g := range good {
			if _, ok := byID[g.EventID]; !ok {
				missing = append(missing, g.EventID)
			}
		}
		if len(missing) == 0 {
			return byID
		}
		if time.Now().After(deadline) {
			t.Fatalf("good events of the transaction never reached globex: %v", missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// absent fails when an event with this id, or a message with this body, is in the history.
func absent(t *testing.T, what string, history map[string]client.Frame, eventID, body string) {
	t.Helper()
	if _, ok := history[eventID]; ok {
		t.Errorf("%s: event %s was stored at globex", what, eventID)
	}
	if body == "" {
		return
	}
	for id, e := range history {
		if bodyOf(e) == body {
			t.Errorf("%s: a message with body %q was stored at globex (as %s)", what, body, id)
		}
	}
}

// logLinesAbout is p's log lines naming eventID that have every one of substrs.
func logLinesAbout(p *proc, eventID string, substrs ...string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(p.logs()))
	sc.Buffer(make([]byte, 1<<16), 1<<22)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "event_id="+eventID) {
			continue
		}
		for _, s := range substrs {
			if !strings.Contains(line, s) {
				continue lines
			}
		}
		out = append(out, line)
	}
	return out
}

// droppedFor waits (bounded) for a log line of p about eventID that has every one of substrs.
func droppedFor(p *proc, eventID string, substrs ...string) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if len(logLinesAbout(p, eventID, substrs...)) > 0 {
			return true
		}
	}
	return false
}

func (r *pduRig) expectDropped(t *testing.T, what, eventID string, substrs ...string) {
	t.Helper()
	if !droppedFor(r.globex.node, eventID, substrs...) {
		t.Errorf("%s: globex logged no line for %s with %q", what, eventID, substrs)
	}
}

// TestFederationDropsBadPDUsAlone: each bad event of a correctly signed transaction is dropped
// (and logged with its reason) while the good events around it are applied: a content hash
// that does not match the content, an event_id that is not the reference hash, a signature
// that is not by the origin's key, an event of a room that does not federate, and events the
// room rules refuse (a sender who is not a member; name and power level changes by a member
// without the power), each next to the same event by a sender who may, which is applied.
// Then events redacted at their origin, relayed as the outbox relays them (redacted form, the
// redaction under unsigned), still verify at globex and are stored there: one of acme's own,
// and one of initech's that acme relays.
func TestFederationDropsBadPDUsAlone(t *testing.T) {
	r := startPDURig(t)
	const alice, dave, mallory, carol = "@alice:acme.test", "@dave:acme.test", "@mallory:acme.test", "@carol:initech.test"

	t.Run("tampered content hash", func(t *testing.T) {
		before, after := r.message(t, r.room, alice, "hash: good before"), r.message(t, r.room, alice, "hash: good after")
		bad := r.message(t, r.room, alice, "hash: as sealed")
		// Changed after sealing and signing. A message's redacted form has no content, so the
		// event_id and the signature still match: only the content hash tells.
		bad.Content = json.RawMessage(`{"body":"hash: tampered","msgtype":"m.text"}`)
		if err := event.VerifySignature(bad, "acme.test", "ed25519:"+r.acme.keyRaw.KeyID, r.acme.keyRaw.Private.Public().(ed25519.PublicKey)); err != nil {
			t.Fatalf("the tampered event's signature should still verify: %v", err)
		}
		r.send(t, before, bad, after)
		h := r.arrived(t, r.room, before, after)
		absent(t, "tampered content", h, bad.EventID, "hash: tampered")
		absent(t, "tampered content", h, bad.EventID, "hash: as sealed")
		r.expectDropped(t, "tampered content", bad.EventID, "event dropped", "content hash mismatch")
	})

	t.Run("tampered event_id", func(t *testing.T) {
		before, after := r.message(t, r.room, alice, "id: good before"), r.message(t, r.room, alice, "id: good after")
		bad := r.message(t, r.room, alice, "id: bad")
		real := bad.EventID
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		bad.EventID = "$" + base64.RawURLEncoding.EncodeToString(b) // signatures do not cover the id
		// And an event claiming another (good) event's id.
		thief := r.message(t, r.room, alice, "id: thief")
		thief.EventID = after.EventID
		r.send(t, before, bad, thief, after)
		h := r.arrived(t, r.room, before, after)
		absent(t, "tampered event_id", h, bad.EventID, "id: bad")
		absent(t, "tampered event_id", h, real, "")
		absent(t, "stolen event_id", h, "", "id: thief")
		if got := bodyOf(h[after.EventID]); got != "id: good after" {
			t.Errorf("the event stored as %s has body %q, want %q", after.EventID, got, "id: good after")
		}
		r.expectDropped(t, "tampered event_id", bad.EventID, "event dropped", "event id mismatch")
	})

	t.Run("bad event signature", func(t *testing.T) {
		before, after := r.message(t, r.room, alice, "sig: good before"), r.message(t, r.room, alice, "sig: good after")
		prev, depth := r.head(t)
		spec := func(body string) pduSpec {
			return pduSpec{room: r.room, sender: alice, typ: "m.room.message", prev: prev, depth: depth + 1,
				content: map[string]any{"msgtype": "m.text", "body": body}}
		}
		_, forgedPriv, _ := ed25519.GenerateKey(rand.Reader)
		// Signed under acme's key id with a key that is not acme's.
		forged := r.build(t, spec("sig: forged key"), &federation.SigningKey{KeyID: r.acme.keyRaw.KeyID, Private: forgedPriv})
		// Signed under acme's key id with initech's real key: a peer's key, but the wrong one.
		wrongOrg := r.build(t, spec("sig: initech's key"), &federation.SigningKey{KeyID: r.acme.keyRaw.KeyID, Private: r.initech.keyRaw.Private})
		// acme's real signature, of another event.
		other := r.build(t, spec("sig: the signed one"), r.acme.keyRaw)
		copied := r.build(t, spec("sig: copied signature"), nil)
		copied.Signatures = other.Signatures
		// No signature at all.
		unsigned := r.build(t, spec("sig: unsigned"), nil)
		r.send(t, before, forged, wrongOrg, copied, unsigned, after)
		h := r.arrived(t, r.room, before, after)
		for _, c := range []struct {
			e      *event.Event
			body   string
			reason string
		}{
			{forged, "sig: forged key", "bad signature"},
			{wrongOrg, "sig: initech's key", "bad signature"},
			{copied, "sig: copied signature", "bad signature"},
			{unsigned, "sig: unsigned", "no signature"},
		} {
			absent(t, "bad signature", h, c.e.EventID, c.body)
			r.expectDropped(t, "bad signature ("+c.body+")", c.e.EventID, "event dropped", c.reason)
		}
	})

	t.Run("room does not federate", func(t *testing.T) {
		before, after := r.message(t, r.room, alice, "fed: good before"), r.message(t, r.room, alice, "fed: good after")
		lh := allEvents(t, r.bob, r.lonely)
		last := lh[len(lh)-1]
		depth, _ := last["depth"].(float64)
		bad := r.build(t, pduSpec{room: r.lonely, sender: alice, typ: "m.room.message", prev: last["event_id"].(string),
			depth: int64(depth) + 1, content: map[string]any{"msgtype": "m.text", "body": "fed: into a local room"}}, r.acme.keyRaw)
		r.send(t, before, bad, after)
		r.arrived(t, r.room, before, after)
		lonely := map[string]client.Frame{}
		for _, e := range allEvents(t, r.bob, r.lonely) {
			lonely[e["event_id"].(string)] = e
		}
		absent(t, "room that does not federate", lonely, bad.EventID, "fed: into a local room")
		// Dropped by the federation setting, not (only) by the room rules further down.
		r.expectDropped(t, "room that does not federate", bad.EventID, "event dropped", "does not federate")
	})

	t.Run("refused by the room rules", func(t *testing.T) {
		prev, depth := r.head(t)
		sk := ""
		at := func(sender, typ string, stateKey *string, content any) *event.Event {
			return r.build(t, pduSpec{room: r.room, sender: sender, typ: typ, stateKey: stateKey, content: content,
				prev: prev, depth: depth + 1}, r.keyOf(sender))
		}
		said := map[string]any{"msgtype": "m.text", "body": "rules: who may say this"}
		name := map[string]any{"name": "Renamed by a relayed event"}
		power := state.DefaultPowerLevels(alice)
		power.Users = map[string]int64{alice: 100, dave: 100}
		// The refused events, each with its twin by a sender who may, which is applied.
		notMember, memberSaid := at(mallory, "m.room.message", nil, said), at(alice, "m.room.message", nil, said)
		weakName, strongName := at(dave, "m.room.name", &sk, name), at(alice, "m.room.name", &sk, name)
		weakPower, strongPower := at(dave, "m.room.power_levels", &sk, power), at(alice, "m.room.power_levels", &sk, power)
		// The refused ones come first: alice's power levels raise dave to 100.
		r.send(t, notMember, weakName, weakPower, memberSaid, strongName, strongPower)
		h := r.arrived(t, r.room, memberSaid, strongName, strongPower)
		absent(t, "sender not a member", h, notMember.EventID, "")
		absent(t, "name change without power", h, weakName.EventID, "")
		absent(t, "power levels change without power", h, weakPower.EventID, "")
		for id, e := range h {
			if e["sender"] == mallory {
				t.Errorf("an event of %s (%s) was stored at globex", mallory, id)
			}
			if e["sender"] == dave && e["type"] != "m.room.member" {
				t.Errorf("dave's %v (%s) was stored at globex", e["type"], id)
			}
		}
		r.expectDropped(t, "sender not a member", notMember.EventID, "refused by room rules", "not a member of the room")
		r.expectDropped(t, "name change without power", weakName.EventID, "refused by room rules", "needs power 50")
		r.expectDropped(t, "power levels change without power", weakPower.EventID, "refused by room rules", "needs power 50")
		if s := roomSummary(t, r.bob, r.room); s == nil || s["name"] != "Renamed by a relayed event" {
			t.Errorf("the room at globex after alice's rename: %v", s)
		}
	})

	t.Run("redacted at the origin, relayed", func(t *testing.T) {
		// The form the outbox relays a redacted event in (wirePDU): content stripped, the
		// (signed) redaction under unsigned. Neither hashes nor signatures change.
		redacted := func(sender, body string) (orig, red, because *event.Event) {
			orig = r.message(t, r.room, sender, body)
			because = r.build(t, pduSpec{room: r.room, sender: sender, typ: "m.room.redaction", redacts: orig.EventID,
				content: map[string]any{"reason": "oops"}, prev: orig.EventID, depth: orig.Depth + 1}, r.keyOf(sender))
			red = event.Redact(orig)
			red.Unsigned = &event.Unsigned{RedactedBecause: because.Clone()}
			if red.EventID != orig.EventID || string(red.Content) == string(orig.Content) {
				t.Fatalf("redacting changed the id or kept the content: %s %s", red.EventID, red.Content)
			}
			return orig, red, because
		}
		// One of acme's own, relayed by acme with its redaction after it.
		ownOrig, own, ownRedaction := redacted(alice, "red: alice's secret")
		// One of initech's, relayed by acme (the room's home), without its redaction.
		relayedOrig, relayed, _ := redacted(carol, "red: carol's secret")
		good := r.message(t, r.room, alice, "red: good")
		// As a control, initech's event with other content that does not claim to be redacted
		// (same event_id, since a message's id does not cover its content) is dropped, just
		// before its genuine redacted form is accepted.
		tampered := relayedOrig.Clone()
		tampered.Content = json.RawMessage(`{"body":"red: carol's other secret","msgtype":"m.text"}`)
		r.send(t, own, ownRedaction, tampered, relayed, good)
		h := r.arrived(t, r.room, own, ownRedaction, relayed, good)
		r.expectDropped(t, "tampered relayed event", tampered.EventID, "event dropped", "content hash mismatch")
		for _, e := range []*event.Event{ownOrig, relayedOrig} {
			f := h[e.EventID]
			if c, _ := f["content"].(map[string]any); len(c) != 0 {
				t.Errorf("%s is stored at globex with content %v, want the redacted form {}", e.EventID, f["content"])
			}
			if f["sender"] != e.Sender || f["origin"] != e.Origin {
				t.Errorf("%s is stored as %v/%v, want %s/%s", e.EventID, f["sender"], f["origin"], e.Sender, e.Origin)
			}
			// The one refusal logged for this id is the tampered control's.
			for _, line := range logLinesAbout(r.globex.node, e.EventID, "federation: event") {
				if e != relayedOrig || !strings.Contains(line, "content hash mismatch") {
					t.Errorf("globex logged a refusal of %s: %s", e.EventID, line)
				}
			}
		}
		absent(t, "redacted event", h, "", "red: alice's secret")
		absent(t, "redacted event", h, "", "red: carol's secret")
		absent(t, "tampered, unredacted", h, "", "red: carol's other secret")
		if h[ownRedaction.EventID]["redacts"] != ownOrig.EventID {
			t.Errorf("the redaction is stored as %v", h[ownRedaction.EventID])
		}
		// The redaction that came after it is applied to it as to any stored event.
		if u, _ := h[ownOrig.EventID]["unsigned"].(map[string]any); u == nil {
			t.Errorf("%s has no unsigned.redacted_because at globex", ownOrig.EventID)
		} else if b, _ := u["redacted_because"].(map[string]any); b == nil || b["event_id"] != ownRedaction.EventID {
			t.Errorf("%s is stored at globex with unsigned %v, want redacted_because %s", ownOrig.EventID, u, ownRedaction.EventID)
		}
	})

	// Each transaction was correctly signed: none was dead-lettered whole.
	if d, ok, err := r.ch.Get(federation.QueueDLQ, true); err != nil {
		t.Fatal(err)
	} else if ok {
		t.Errorf("a transaction was dead-lettered: %v", d.Headers["x-parley-error"])
	}
}
