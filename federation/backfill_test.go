package federation

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// backfillEvent is an event of room !r:a.test sealed and signed like Keys.Sign does it.
func backfillEvent(tb testing.TB, p fuzzPeer, origin, typ, sender, content string, prev ...string) *event.Event {
	tb.Helper()
	if prev == nil {
		prev = []string{}
	}
	e := &event.Event{RoomID: "!r:a.test", Sender: sender, Origin: origin, OriginTS: 1700000000000,
		Type: typ, Content: json.RawMessage(content), PrevEvents: prev, Depth: int64(len(prev) + 1)}
	if typ == "m.room.create" {
		e.StateKey = strp("")
	}
	if err := event.Seal(e); err != nil {
		tb.Fatal(err)
	}
	if err := event.Sign(e, origin, signatureKey(p.key.KeyID), p.key.Private); err != nil {
		tb.Fatal(err)
	}
	return e
}

func msg(body string) string {
	raw, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
	return string(raw)
}

// TestBackfillDropsForgedEvents: a backfill answer's events are checked one by one; forged,
// tampered, misplaced and spoofed events are dropped, the good ones kept, cleaned, once each.
func TestBackfillDropsForgedEvents(t *testing.T) {
	a, c, evil := newFuzzPeer(t), newFuzzPeer(t), newFuzzPeer(t)
	s := &Service{opts: Options{Org: "b.test", Peers: map[string]PeerKey{"a.test": a.peer, "c.test": c.peer}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}

	create := backfillEvent(t, a, "a.test", "m.room.create", "@alice:a.test", `{"creator":"@alice:a.test"}`)
	good := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test", msg("good"), create.EventID)
	third := backfillEvent(t, c, "c.test", "m.room.message", "@carol:c.test", msg("from a third org"), good.EventID)
	before := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test", msg("the one asked about"), third.EventID)

	withPosAndTxn := good.Clone()
	withPosAndTxn.StreamPos = 77
	withPosAndTxn.Unsigned = &event.Unsigned{TxnID: "someone's txn"}

	forged := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test", msg("forged"), create.EventID)
	forged.Signatures = nil
	if err := event.Sign(forged, "a.test", signatureKey(a.key.KeyID), evil.key.Private); err != nil {
		t.Fatal(err)
	}
	tampered := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test", msg("original"), create.EventID)
	tampered.Content = json.RawMessage(msg("tampered"))
	resealed := tampered.Clone()
	if err := event.Seal(resealed); err != nil { // a new id and hash, but the old signature
		t.Fatal(err)
	}
	unsigned := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test", msg("unsigned"), create.EventID)
	unsigned.Signatures = nil
	otherRoom := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test", msg("other room"), create.EventID)
	otherRoom.RoomID = "!other:a.test"
	_ = event.Seal(otherRoom)
	otherRoom.Signatures = nil
	_ = event.Sign(otherRoom, "a.test", signatureKey(a.key.KeyID), a.key.Private)
	unknownOrigin := backfillEvent(t, evil, "evil.test", "m.room.message", "@mallory:evil.test", msg("unknown origin"), create.EventID)
	spoofed := backfillEvent(t, a, "a.test", "m.room.message", "@carol:c.test", msg("spoofed sender"), create.EventID)
	thirdCreate := backfillEvent(t, c, "c.test", "m.room.create", "@carol:c.test", `{"creator":"@carol:c.test"}`)
	xss := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test",
		`{"body":"x","format":"org.matrix.custom.html","formatted_body":"<script>x</script>","msgtype":"m.text"}`, create.EventID)

	// A redacted event with a forged redacted_because: the event stays, the redaction goes.
	redacted := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test", `{}`, create.EventID)
	fakeRedaction := backfillEvent(t, evil, "a.test", "m.room.redaction", "@alice:a.test", `{}`, create.EventID)
	redacted.Unsigned = &event.Unsigned{RedactedBecause: fakeRedaction}

	got := s.checkBackfill("backfill", "a.test", "!r:a.test", before.EventID, []*event.Event{
		create, forged, tampered, resealed, unsigned, otherRoom, unknownOrigin, spoofed, thirdCreate, xss,
		withPosAndTxn, good, third, before, nil, redacted,
	})
	var ids []string
	for _, e := range got {
		ids = append(ids, e.EventID)
	}
	want := []string{create.EventID, good.EventID, third.EventID, redacted.EventID}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("kept %v, want %v (create, good, third, redacted)", ids, want)
	}
	for _, e := range got {
		if e.StreamPos != 0 {
			t.Errorf("%s kept the answerer's stream_pos %d", e.EventID, e.StreamPos)
		}
		if e.Unsigned != nil {
			t.Errorf("%s kept unsigned %+v", e.EventID, e.Unsigned)
		}
	}

	// A genuine redacted_because is kept.
	realRedaction := backfillEvent(t, a, "a.test", "m.room.redaction", "@alice:a.test", `{}`, create.EventID)
	realRedaction.Redacts = redacted.EventID
	_ = event.Seal(realRedaction)
	realRedaction.Signatures = nil
	_ = event.Sign(realRedaction, "a.test", signatureKey(a.key.KeyID), a.key.Private)
	r2 := redacted.Clone()
	r2.Unsigned = &event.Unsigned{RedactedBecause: realRedaction}
	got = s.checkBackfill("backfill", "a.test", "!r:a.test", before.EventID, []*event.Event{r2})
	if len(got) != 1 || got[0].Unsigned == nil || got[0].Unsigned.RedactedBecause == nil ||
		got[0].Unsigned.RedactedBecause.EventID != realRedaction.EventID {
		t.Fatalf("a verified redacted_because was not kept: %+v", got)
	}
}

// validBackfillParams is the params of a valid backfill request.
const validBackfillParams = `{"room_id":"!r:a.test","event_ids":["$abc"],"limit":50}`

func FuzzDecodeBackfillParams(f *testing.F) {
	f.Add([]byte(validBackfillParams))
	for _, s := range []string{
		``, `null`, `[]`, `{}`, `"x"`,
		`{"room_id":"!r:a.test","event_ids":["$abc"],"limit":100}`,
		`{"room_id":"!r:a.test","event_ids":["$abc"],"limit":101}`,
		`{"room_id":"!r:a.test","event_ids":["$abc"],"limit":0}`,
		`{"room_id":"!r:a.test","event_ids":["$abc"],"limit":-1}`,
		`{"room_id":"!r:a.test","event_ids":["$abc"],"limit":1.5}`,
		`{"room_id":"!r:a.test","event_ids":["$abc"],"limit":99999999999999999999}`,
		`{"room_id":"!r:a.test","event_ids":[],"limit":5}`,
		`{"room_id":"!r:a.test","event_ids":null,"limit":5}`,
		`{"room_id":"!r:a.test","event_ids":[null],"limit":5}`,
		`{"room_id":"!r:a.test","event_ids":["abc"],"limit":5}`,
		`{"room_id":"!r:a.test","event_ids":["$a b"],"limit":5}`,
		`{"room_id":"!r:a.test","event_ids":["$` + strings.Repeat("a", 255) + `"],"limit":5}`,
		`{"room_id":"!r:a.test","event_ids":[` + strings.Repeat(`"$a",`, maxBackfillIDs) + `"$a"],"limit":5}`,
		`{"room_id":"#r:a.test","event_ids":["$abc"],"limit":5}`,
		`{"room_id":"","event_ids":["$abc"],"limit":5}`,
		"{\"room_id\":\"!r\xff\",\"event_ids\":[\"$abc\"],\"limit\":5}",
		`{"room_id":"!r:a.test","event_ids":["$abc"],"limit":5,"extra":1}`,
		`{"room_id":"!r:a.test","event_ids":["$abc"],"limit":5} {}`,
		`{"room_id":"!r:a.test","room_id":"!s:a.test","event_ids":["$abc"],"limit":5}`,
		`{"event_ids":` + strings.Repeat(`[`, 5000) + `}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := decodeBackfillParams(raw)
		if err != nil {
			if p != nil {
				t.Fatalf("decodeBackfillParams returned both params and %v", err)
			}
			return
		}
		switch {
		case len(raw) > MaxMessageBytes:
			t.Fatalf("accepted %d bytes of params", len(raw))
		case !strings.HasPrefix(p.RoomID, "!") || len(p.RoomID) > 255:
			t.Fatalf("accepted room_id %q", p.RoomID)
		case len(p.EventIDs) < 1 || len(p.EventIDs) > maxBackfillIDs:
			t.Fatalf("accepted %d event_ids", len(p.EventIDs))
		case p.Limit < 1 || p.Limit > MaxBackfillEvents:
			t.Fatalf("accepted limit %d", p.Limit)
		}
		for _, id := range p.EventIDs {
			if !strings.HasPrefix(id, "$") || len(id) > 255 || strings.ContainsAny(id, " \x00\n") {
				t.Fatalf("accepted event id %q", id)
			}
		}
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeBackfillParams(again); err != nil {
			t.Fatalf("re-encoded params refused: %v\n%s", err, again)
		}
	})
}

// validBackfillAnswer is a backfill result with two signed events of a.test.
func validBackfillAnswer(tb testing.TB, p fuzzPeer) []byte {
	tb.Helper()
	create := backfillEvent(tb, p, "a.test", "m.room.create", "@alice:a.test", `{"creator":"@alice:a.test"}`)
	m := backfillEvent(tb, p, "a.test", "m.room.message", "@alice:a.test", msg("hi"), create.EventID)
	raw, err := json.Marshal(backfillResult{Events: []*event.Event{create, m}})
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

func FuzzDecodeBackfillResult(f *testing.F) {
	p := newFuzzPeer(f)
	valid := validBackfillAnswer(f, p)
	f.Add(valid)
	for _, mut := range []func(m map[string]any){
		func(m map[string]any) { m["events"] = nil },
		func(m map[string]any) { m["events"] = []any{nil} },
		func(m map[string]any) { m["events"] = []any{} },
		func(m map[string]any) { m["events"] = make([]any, MaxBackfillEvents+1) },
		func(m map[string]any) { m["more"] = true },
		func(m map[string]any) { m["events"].([]any)[1].(map[string]any)["unknown"] = 1 },
		func(m map[string]any) {
			m["events"].([]any)[1].(map[string]any)["content"] = map[string]any{"body": 1.5}
		},
		func(m map[string]any) { m["events"].([]any)[1].(map[string]any)["room_id"] = "!other:a.test" },
		func(m map[string]any) { m["events"].([]any)[1].(map[string]any)["stream_pos"] = 5 },
		func(m map[string]any) {
			m["events"].([]any)[1].(map[string]any)["unsigned"] = map[string]any{"redacted_because": map[string]any{"content": []any{}}}
		},
		func(m map[string]any) {
			m["events"].([]any)[1].(map[string]any)["signatures"] = map[string]any{"a.test": map[string]any{p.key.KeyID: "!!"}}
		},
	} {
		f.Add(mutateJSON(f, valid, mut))
	}
	for _, s := range []string{``, `null`, `[]`, `{}`, `{"events":[]} {}`, `{"events":[{}]}`,
		`{"events":[` + strings.Repeat(`{"unsigned":{"redacted_because":`, 50) + `{}` + strings.Repeat(`}}`, 50) + `]}`,
		`{"events":` + strings.Repeat(`[`, 10000) + `}`} {
		f.Add([]byte(s))
	}
	s := &Service{opts: Options{Org: "b.test", Peers: map[string]PeerKey{"a.test": p.peer}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := decodeBackfillResult(raw)
		if err != nil {
			if r != nil {
				t.Fatalf("decodeBackfillResult returned both a result and %v", err)
			}
			return
		}
		if r.Events == nil || len(r.Events) > MaxBackfillEvents {
			t.Fatalf("accepted %d events", len(r.Events))
		}
		for i, e := range r.Events {
			if e == nil {
				t.Fatalf("accepted a null event at %d", i)
			}
		}
		// What the requester does next must not panic, and keeps only verified events.
		for _, e := range s.checkBackfill("backfill", "a.test", "!r:a.test", "$before", r.Events) {
			if e.RoomID != "!r:a.test" || e.StreamPos != 0 || event.Check(e) != nil ||
				verifyEvent(e, e.Origin, p.peer) != nil {
				t.Fatalf("kept an event that does not verify: %+v", e)
			}
			if e.Unsigned != nil && (e.Unsigned.TxnID != "" || e.Unsigned.RedactedBecause == nil) {
				t.Fatalf("kept unsigned data %+v", e.Unsigned)
			}
		}
	})
}

// TestBackfillDecodeBounds checks what the fuzz seeds cannot carry cheaply, and that the valid
// seeds are accepted, so the fuzz targets start from real messages.
func TestBackfillDecodeBounds(t *testing.T) {
	p := newFuzzPeer(t)
	if _, err := decodeBackfillParams([]byte(validBackfillParams)); err != nil {
		t.Fatalf("valid params refused: %v", err)
	}
	r, err := decodeBackfillResult(validBackfillAnswer(t, p))
	if err != nil || len(r.Events) != 2 {
		t.Fatalf("valid answer: %v, %v", r, err)
	}
	s := &Service{opts: Options{Org: "b.test", Peers: map[string]PeerKey{"a.test": p.peer}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if got := s.checkBackfill("backfill", "a.test", "!r:a.test", "$x", r.Events); len(got) != 2 {
		t.Fatalf("valid answer's events dropped: kept %d", len(got))
	}
	many := fmt.Sprintf(`{"events":[%s{}]}`, strings.Repeat(`{},`, MaxBackfillEvents))
	if _, err := decodeBackfillResult([]byte(many)); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("%d events: %v, want a refusal", MaxBackfillEvents+1, err)
	}
	huge := []byte(`{"events":[],"pad":"` + strings.Repeat("x", 8*MaxMessageBytes) + `"}`)
	if _, err := decodeBackfillResult(huge); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("huge answer: %v, want a size refusal", err)
	}
	big := []byte(`{"room_id":"!r:a.test","event_ids":["$a"],"limit":5,"pad":"` + strings.Repeat("x", MaxMessageBytes) + `"}`)
	if _, err := decodeBackfillParams(big); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("huge params: %v, want a size refusal", err)
	}
	// Own-org events verify with this org's key only when it has one.
	if _, ok := s.originKeys("b.test"); ok {
		t.Error("a key for this org without Keys")
	}
	if k, ok := s.originKeys("a.test"); !ok || k.KeyID != p.key.KeyID || !k.Public.Equal(p.key.Private.Public().(ed25519.PublicKey)) {
		t.Error("the peer's key is not used for its events")
	}
}
