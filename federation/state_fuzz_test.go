package federation

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// send_state parameters come from another org: the same untrusted input as the rest of
// wire.go, fuzzed the same way (see fuzz_test.go).

// stateChangeEvent is a sealed and signed state event of a.test (signed like Keys.Sign does).
func stateChangeEvent(tb testing.TB, p fuzzPeer, typ string, stateKey *string, content string) *event.Event {
	tb.Helper()
	e := &event.Event{RoomID: "!room:b.test", Sender: "@alice:a.test", Origin: "a.test", OriginTS: 1700000000000,
		Type: typ, StateKey: stateKey, Content: json.RawMessage(content), PrevEvents: []string{"$prev"}, Depth: 3}
	if err := event.Seal(e); err != nil {
		tb.Fatal(err)
	}
	if err := event.Sign(e, "a.test", signatureKey(p.key.KeyID), p.key.Private); err != nil {
		tb.Fatal(err)
	}
	return e
}

func sendStateBody(tb testing.TB, e *event.Event) []byte {
	tb.Helper()
	raw, err := json.Marshal(sendStateParams{Event: e})
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// signedStateRequest is a valid signed send_state request from a.test to b.test.
func signedStateRequest(tb testing.TB, p fuzzPeer, e *event.Event) []byte {
	tb.Helper()
	r := &Request{Type: TypeRequest, ReqID: "req-s", Origin: "a.test", Destination: "b.test", OriginTS: 1700000000000,
		Op: "send_state", Params: sendStateBody(tb, e)}
	if err := signMessage(r, "a.test", p.key); err != nil {
		tb.Fatal(err)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

func addSendStateSeeds(f *testing.F, p fuzzPeer) []byte {
	topic := stateChangeEvent(f, p, "m.room.topic", strp(""), `{"topic":"hi"}`)
	valid := sendStateBody(f, topic)
	f.Add(valid)
	for _, e := range []*event.Event{
		stateChangeEvent(f, p, "m.room.member", strp("@alice:a.test"), `{"membership":"leave"}`),
		stateChangeEvent(f, p, "m.room.member", strp("@bob:b.test"), `{"membership":"ban","reason":"spam"}`),
		stateChangeEvent(f, p, "m.room.member", strp("@carol:a.test"), `{"membership":"invite"}`),
		stateChangeEvent(f, p, "m.room.member", strp("@alice:a.test"), `{"membership":"join"}`),
		stateChangeEvent(f, p, "m.room.member", strp("@alice:a.test"), `{"membership":"knock"}`),
		stateChangeEvent(f, p, "m.room.member", strp("@alice:a.test"), `{"membership":5}`),
		stateChangeEvent(f, p, "m.room.power_levels", strp(""), `{"users":{"@alice:a.test":100},"ban":50}`),
		stateChangeEvent(f, p, "m.room.name", strp("x"), `{"name":"n"}`),
		stateChangeEvent(f, p, "m.room.create", strp(""), `{"creator":"@alice:a.test"}`),
		stateChangeEvent(f, p, "m.room.message", nil, `{"body":"hi","msgtype":"m.text"}`),
		stateChangeEvent(f, p, "m.room.topic", nil, `{"topic":"no state key"}`),
	} {
		f.Add(sendStateBody(f, e))
	}
	for _, mut := range []func(m map[string]any){
		func(m map[string]any) { m["event"] = nil },
		func(m map[string]any) { delete(m, "event") },
		func(m map[string]any) { m["event"] = "not an object" },
		func(m map[string]any) { m["extra"] = 1 },
		func(m map[string]any) { m["event"].(map[string]any)["state_key"] = nil },
		func(m map[string]any) { m["event"].(map[string]any)["content"] = map[string]any{"topic": 1.5} },
		func(m map[string]any) { m["event"].(map[string]any)["unknown"] = true },
		func(m map[string]any) { m["event"].(map[string]any)["type"] = "m.room.member" },
		func(m map[string]any) { m["event"].(map[string]any)["sender"] = "@mallory:b.test" },
	} {
		f.Add(mutateJSON(f, valid, mut))
	}
	for _, s := range []string{``, `null`, `[]`, `{}`, `{"event":{}}`, `{"event":null}`, `{"event":{"state_key":""}} {}`,
		`{"event":{"type":"m.room.member","state_key":"@a:b","content":null}}`,
		`{"event":{"type":"m.room.topic","state_key":"","content":{"a":1,"a":2}}}`,
		`{"event":` + strings.Repeat(`{"unsigned":{"redacted_because":`, 50) + `{}` + strings.Repeat(`}}`, 50) + `}`,
		strings.Repeat(`[`, 10000)} {
		f.Add([]byte(s))
	}
	return valid
}

// FuzzDecodeSendState: the parameters of a send_state request. Whatever is accepted is a state
// change another org may ask for, survives a re-encoding, and the checks the home org runs
// next do not panic on it.
func FuzzDecodeSendState(f *testing.F) {
	p := newFuzzPeer(f)
	addSendStateSeeds(f, p)
	f.Fuzz(func(t *testing.T, params []byte) {
		e, rerr := decodeSendState(params)
		if rerr != nil {
			if e != nil {
				t.Fatalf("decodeSendState returned both an event and %v", rerr)
			}
			if rerr.Code != "M_BAD_JSON" && rerr.Code != "M_INVALID_PARAM" {
				t.Fatalf("refused with code %q", rerr.Code)
			}
			return
		}
		if e == nil || e.StateKey == nil || isJoin(e) || e.Type == "m.room.create" {
			t.Fatalf("accepted %+v", e)
		}
		if err := checkStateChange(e); err != nil {
			t.Fatalf("accepted an event checkStateChange refuses: %v", err)
		}
		again, err := json.Marshal(sendStateParams{Event: e})
		if err != nil {
			t.Fatalf("re-encoding accepted params: %v", err)
		}
		e2, rerr := decodeSendState(again)
		if rerr != nil {
			t.Fatalf("re-encoded params refused: %v\n%s", rerr, again)
		}
		if e2.EventID != e.EventID || e2.Type != e.Type || *e2.StateKey != *e.StateKey {
			t.Fatalf("re-encoding changed the event: %+v vs %+v", e, e2)
		}
		// What sendState runs next, short of the store: none of it may panic.
		_ = event.Check(e)
		_ = verifyEvent(e, e.Origin, p.peer)
		_ = checkContent(e)
		_ = stored(e)
		_ = wirePDU(e)
		_ = roomOrg(e.RoomID) + userOrg(e.Sender)
	})
}

// FuzzSendStateRequest: a whole send_state request off the broker, decoded as handleRequest
// and answer do before they reach the store.
func FuzzSendStateRequest(f *testing.F) {
	p := newFuzzPeer(f)
	topic := stateChangeEvent(f, p, "m.room.topic", strp(""), `{"topic":"hi"}`)
	valid := signedStateRequest(f, p, topic)
	f.Add(valid)
	for _, mut := range []func(m map[string]any){
		func(m map[string]any) { m["params"] = map[string]any{"event": nil} },
		func(m map[string]any) { m["params"] = map[string]any{"event": map[string]any{"state_key": 1}} },
		func(m map[string]any) { m["params"] = "x" },
		func(m map[string]any) { m["origin"] = "evil.test" },
		func(m map[string]any) { m["op"] = "send_join" },
		func(m map[string]any) { delete(m, "signatures") },
	} {
		f.Add(mutateJSON(f, valid, mut))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeRequest(body)
		if err != nil {
			return
		}
		if verifyMessage(r, r.Origin, p.peer) == nil && r.Origin != "a.test" {
			t.Fatalf("a request claiming origin %q verified with a.test's key", r.Origin)
		}
		if r.Op != "send_state" {
			return
		}
		if e, rerr := decodeSendState(r.Params); rerr == nil {
			_ = event.Check(e)
			_ = checkContent(e)
		}
	})
}

// TestDecodeSendState pins what the fuzz targets start from: the valid seeds are accepted and
// verify, and each kind of bad parameter gets its code.
func TestDecodeSendState(t *testing.T) {
	p := newFuzzPeer(t)
	for _, e := range []*event.Event{
		stateChangeEvent(t, p, "m.room.topic", strp(""), `{"topic":"hi"}`),
		stateChangeEvent(t, p, "m.room.name", strp(""), `{"name":"n"}`),
		stateChangeEvent(t, p, "m.room.power_levels", strp(""), `{"ban":50,"users":{"@alice:a.test":100}}`),
		stateChangeEvent(t, p, "m.room.member", strp("@alice:a.test"), `{"membership":"leave"}`),
		stateChangeEvent(t, p, "m.room.member", strp("@bob:b.test"), `{"membership":"ban"}`),
		stateChangeEvent(t, p, "m.room.member", strp("@carol:c.test"), `{"membership":"invite"}`),
	} {
		got, rerr := decodeSendState(sendStateBody(t, e))
		if rerr != nil {
			t.Errorf("%s refused: %v", e.Type, rerr)
			continue
		}
		if err := event.Check(got); err != nil {
			t.Errorf("%s: %v", e.Type, err)
		}
		if err := verifyEvent(got, "a.test", p.peer); err != nil {
			t.Errorf("%s: %v", e.Type, err)
		}
	}
	r, err := DecodeRequest(signedStateRequest(t, p, stateChangeEvent(t, p, "m.room.topic", strp(""), `{"topic":"hi"}`)))
	if err != nil || verifyMessage(r, "a.test", p.peer) != nil {
		t.Fatalf("valid send_state request: %v", err)
	}
	for name, tc := range map[string]struct {
		params []byte
		code   string
	}{
		"not json":       {[]byte(`{"event":`), "M_BAD_JSON"},
		"no event":       {[]byte(`{}`), "M_BAD_JSON"},
		"null event":     {[]byte(`{"event":null}`), "M_BAD_JSON"},
		"unknown field":  {[]byte(`{"event":{},"x":1}`), "M_BAD_JSON"},
		"trailing":       {[]byte(`{"event":{}} {}`), "M_BAD_JSON"},
		"message":        {sendStateBody(t, stateChangeEvent(t, p, "m.room.message", nil, `{"body":"x","msgtype":"m.text"}`)), "M_INVALID_PARAM"},
		"join":           {sendStateBody(t, stateChangeEvent(t, p, "m.room.member", strp("@alice:a.test"), `{"membership":"join"}`)), "M_INVALID_PARAM"},
		"create":         {sendStateBody(t, stateChangeEvent(t, p, "m.room.create", strp(""), `{"creator":"@alice:a.test"}`)), "M_INVALID_PARAM"},
		"odd membership": {sendStateBody(t, stateChangeEvent(t, p, "m.room.member", strp("@alice:a.test"), `{"membership":"knock"}`)), "M_INVALID_PARAM"},
		"topic with key": {sendStateBody(t, stateChangeEvent(t, p, "m.room.topic", strp("x"), `{"topic":"t"}`)), "M_INVALID_PARAM"},
		"custom state":   {sendStateBody(t, stateChangeEvent(t, p, "com.example.state", strp(""), `{}`)), "M_INVALID_PARAM"},
	} {
		if e, rerr := decodeSendState(tc.params); rerr == nil || rerr.Code != tc.code || e != nil {
			t.Errorf("%s: decodeSendState = %v, %v; want %s", name, e, rerr, tc.code)
		}
	}
}

// TestStateEventsOnlyFromHome: the inbox drops a state event of a room that the transaction's
// origin is not the home of, before it looks further (no store needed to refuse it); the relay
// rules leave state changes of other orgs' rooms to their home and send them (joins included)
// back to the org that asked.
func TestStateEventsOnlyFromHome(t *testing.T) {
	a, c := newFuzzPeer(t), newFuzzPeer(t)
	// b.test is the home of !room:b.test; a.test and c.test are peers.
	s := &Service{opts: Options{Org: "b.test", Peers: map[string]PeerKey{"a.test": a.peer, "c.test": c.peer}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	topic := stateChangeEvent(t, a, "m.room.topic", strp(""), `{"topic":"direct"}`)
	if err := s.checkTxnPDU("a.test", topic); !errors.Is(err, errDrop) || !strings.Contains(err.Error(), "home org") {
		t.Errorf("a state change of b.test's room sent by its origin: %v, want dropped", err)
	}
	// In c.test's eyes: a.test relaying its own state change of b.test's room, peer to peer.
	sc := &Service{opts: Options{Org: "c.test", Peers: map[string]PeerKey{"a.test": a.peer}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := sc.checkTxnPDU("a.test", topic); !errors.Is(err, errDrop) {
		t.Errorf("a state change relayed by a non-home org: %v, want dropped", err)
	}

	join := stateChangeEvent(t, a, "m.room.member", strp("@alice:a.test"), `{"membership":"join"}`)
	msg := stateChangeEvent(t, a, "m.room.message", nil, `{"body":"hi","msgtype":"m.text"}`)
	for _, tc := range []struct {
		svc                 *Service
		e                   *event.Event
		returns, leftToHome bool
	}{
		{s, topic, true, false}, // home: relays a.test's change, back to a.test too
		{s, join, true, false},  // home: a join comes back too, in case its answer was lost (recoverJoin)
		{s, msg, false, false},  // messages go peer to peer
		{sc, topic, false, true},
		{sc, join, false, true},
		{sc, msg, false, false},
	} {
		if got := tc.svc.returnsToOrigin(tc.e); got != tc.returns {
			t.Errorf("%s returnsToOrigin(%s) = %v", tc.svc.opts.Org, tc.e.Type, got)
		}
		if got := tc.svc.leftToHome(tc.e); got != tc.leftToHome {
			t.Errorf("%s leftToHome(%s) = %v", tc.svc.opts.Org, tc.e.Type, got)
		}
	}
}

// TestFetchedStateEventsOnlyFromHome: get_missing_events answers are taken whoever's events
// they hold, but a state event only from the room's home org, as in transactions: an org that
// made a state change of a third org's room and named it as a message's prev_event cannot slip
// it in through gap repair, and no state event of this org's own room is taken at all. Both are
// refused before the store is looked at.
func TestFetchedStateEventsOnlyFromHome(t *testing.T) {
	a, c := newFuzzPeer(t), newFuzzPeer(t)
	topic := stateChangeEvent(t, a, "m.room.topic", strp(""), `{"topic":"slipped in"}`) // a.test's, in b.test's room
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	// c.test asked a.test, which answers with its own state change of b.test's room.
	sc := &Service{opts: Options{Org: "c.test", Peers: map[string]PeerKey{"a.test": a.peer}}, log: discard}
	if err := sc.checkFetched("a.test", topic); !errors.Is(err, errDrop) || !strings.Contains(err.Error(), "state event") {
		t.Errorf("a state event of a third org's room answered by a non-home org: %v, want dropped", err)
	}
	// b.test, the home, never takes a state event of its own room from an answer.
	s := &Service{opts: Options{Org: "b.test", Peers: map[string]PeerKey{"a.test": a.peer, "c.test": c.peer}}, log: discard}
	if err := s.checkFetched("a.test", topic); !errors.Is(err, errDrop) {
		t.Errorf("a state event of this org's room from an answer: %v, want dropped", err)
	}
}
