package federation

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/event"
)

// TestGapOutages: an org that does not answer get_missing_events holds its transactions back
// for one window from its first silence, shared by all of them, and is asked at most every
// few seconds meanwhile (rarely after); an answer ends the outage, a transaction that needed
// no request does not.
func TestGapOutages(t *testing.T) {
	var g gapOutages
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	if !g.ask("b.test", t0) {
		t.Fatal("an org never silent is not asked")
	}
	if g.record("b.test", false, false, t0) {
		t.Fatal("a transaction without a gap waits")
	}
	if !g.record("b.test", true, true, t0) {
		t.Fatal("the first silence does not hold the transaction back")
	}
	if g.ask("b.test", at(time.Second)) {
		t.Fatal("asked again 1 s after it did not answer")
	}
	// The transactions behind it: not asked, held back, within the same window.
	if !g.record("b.test", false, true, at(2*time.Second)) {
		t.Fatal("a later transaction with a gap is not held back")
	}
	if g.record("b.test", false, false, at(3*time.Second)); !g.record("b.test", false, true, at(4*time.Second)) {
		t.Fatal("a transaction that needed no request ended the outage")
	}
	if !g.ask("b.test", at(gapProbeEvery)) {
		t.Fatal("not asked again after gapProbeEvery")
	}
	if !g.record("b.test", true, true, at(gapProbeEvery)) {
		t.Fatal("a second silence within the window does not hold back")
	}
	// Past the window: applied with the gap, and asked only every gapProbeAfterWindow.
	past := gapRepairWindow + time.Second
	if g.record("b.test", false, true, at(past)) {
		t.Fatal("still held back after the window")
	}
	if g.ask("b.test", at(past)) {
		t.Fatal("asked every gapProbeEvery after the window")
	}
	probe := gapProbeEvery + gapProbeAfterWindow // since the last request
	if !g.ask("b.test", at(probe)) || g.record("b.test", true, true, at(probe)) {
		t.Fatal("after the window: not asked after gapProbeAfterWindow, or held back")
	}
	// Other orgs are not affected; an answer ends the outage and a new silence opens a new window.
	if !g.ask("c.test", at(past)) || g.record("c.test", true, false, at(past)) {
		t.Fatal("another org is affected")
	}
	g.record("b.test", true, false, at(2*past))
	if !g.ask("b.test", at(2*past)) || !g.record("b.test", true, true, at(2*past)) {
		t.Fatal("after an answer, a new silence does not open a new window")
	}
}

// TestWalkMissing: an answer to get_missing_events walks a chain of events back from the one
// asked for to the requester's latest events, breadth first, within the limit, without events
// the requester may not see or of another room; a request without a limit (a peer from before
// the walk) gets exactly what it asked for. Until 2026-12-07 every answer was the latter, so a gap
// of more than maxMissingRounds events was never repaired.
func TestWalkMissing(t *testing.T) {
	const room = "!r:a.test"
	events := map[string]*event.Event{}
	var chain []string // $e0 <- $e1 <- ... <- $e11
	for i := range 12 {
		e := &event.Event{EventID: fmt.Sprintf("$e%d", i), RoomID: room, PrevEvents: []string{}, Depth: int64(i + 1)}
		if i > 0 {
			e.PrevEvents = []string{chain[i-1]}
		}
		events[e.EventID] = e
		chain = append(chain, e.EventID)
	}
	// A fork: $f names $e3 and a third org's $x, which names $e2.
	events["$x"] = &event.Event{EventID: "$x", RoomID: room, PrevEvents: []string{"$e2"}, Depth: 4}
	events["$f"] = &event.Event{EventID: "$f", RoomID: room, PrevEvents: []string{"$e3", "$x", "$unknown"}, Depth: 5}
	events["$other"] = &event.Event{EventID: "$other", RoomID: "!other:a.test", PrevEvents: []string{}, Depth: 1}
	get := func(id string) (*event.Event, bool) { e, ok := events[id]; return e, ok }
	all := func(*event.Event) bool { return true }
	ids := func(list []*event.Event) string {
		var out []string
		for _, e := range list {
			out = append(out, e.EventID)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name    string
		p       missingParams
		visible func(*event.Event) bool
		want    string
		refused int
	}{
		{"a gap of 8 to the requester's latest", missingParams{EventIDs: []string{"$e10"}, EarliestEvents: []string{"$e2", "$e1"}, Limit: 100},
			all, "$e10,$e9,$e8,$e7,$e6,$e5,$e4,$e3", 0},
		{"within the limit, newest first", missingParams{EventIDs: []string{"$e10"}, EarliestEvents: []string{"$e2"}, Limit: 3},
			all, "$e10,$e9,$e8", 0},
		{"a limit over the cap", missingParams{EventIDs: []string{"$e11"}, Limit: 1000}, all,
			"$e11,$e10,$e9,$e8,$e7,$e6,$e5,$e4,$e3,$e2,$e1,$e0", 0},
		{"a fork, breadth first, each once", missingParams{EventIDs: []string{"$f"}, EarliestEvents: []string{"$e1"}, Limit: 100},
			all, "$f,$e3,$x,$e2", 0},
		{"stops at what the requester may not see", missingParams{EventIDs: []string{"$e10"}, Limit: 100},
			func(e *event.Event) bool { return e.EventID != "$e6" }, "$e10,$e9,$e8,$e7", 1},
		{"no limit: exactly the ids asked for", missingParams{EventIDs: []string{"$e10", "$e4", "$other", "$nope"}},
			all, "$e10,$e4", 0},
		{"nothing visible", missingParams{EventIDs: []string{"$e10"}, Limit: 100},
			func(*event.Event) bool { return false }, "", 1},
	} {
		tc.p.RoomID = room
		got, refused := walkMissing(&tc.p, get, tc.visible)
		if ids(got) != tc.want || refused != tc.refused {
			t.Errorf("%s: answered %q (refused %d), want %q (refused %d)", tc.name, ids(got), refused, tc.want, tc.refused)
		}
	}
}

// TestDecodeMissingParams: the walk's fields are optional, and bounded.
func TestDecodeMissingParams(t *testing.T) {
	for raw, ok := range map[string]bool{
		`{"room_id":"!r:a.test","event_ids":["$a"]}`:                                        true, // a requester from before the walk
		`{"room_id":"!r:a.test","event_ids":["$a"],"earliest_events":["$b"],"limit":100}`:   true,
		`{"room_id":"!r:a.test","event_ids":["$a"],"limit":-1}`:                             false,
		`{"event_ids":["$a"],"limit":10}`:                                                   false,
		`{"room_id":"!r:a.test","event_ids":["$a"],"limit":10,"min_depth":3}`:               false,
		`{"room_id":"!r:a.test","event_ids":["$a"],"earliest_events":` + manyIDs(101) + `}`: false,
		`{"room_id":"!r:a.test","event_ids":["$a"],"earliest_events":` + manyIDs(100) + `}`: true,
	} {
		if _, err := decodeMissingParams([]byte(raw)); (err == nil) != ok {
			t.Errorf("%s: err %v, want ok %v", raw, err, ok)
		}
	}
}

func manyIDs(n int) string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf(`"$e%d"`, i)
	}
	return "[" + strings.Join(ids, ",") + "]"
}

// FuzzDecodeMissingParams: get_missing_events params from a peer never panic the decoder, and
// what it accepts is bounded (a room, a limit not negative, at most maxMissingEvents
// earliest_events) and decodes the same once encoded again.
func FuzzDecodeMissingParams(f *testing.F) {
	for _, s := range []string{
		``, `null`, `[]`, `{}`, `"x"`,
		`{"room_id":"!r:a.test","event_ids":["$a"]}`,
		`{"room_id":"!r:a.test","event_ids":["$a"],"earliest_events":["$b"],"limit":100}`,
		`{"room_id":"!r:a.test","event_ids":["$a"],"limit":-1}`,
		`{"room_id":"!r:a.test","event_ids":["$a"],"limit":1.5}`,
		`{"room_id":"!r:a.test","event_ids":["$a"],"limit":99999999999999999999}`,
		`{"room_id":"!r:a.test","event_ids":["$a"],"earliest_events":` + manyIDs(101) + `}`,
		`{"room_id":"!r:a.test","event_ids":["$a"],"limit":10,"min_depth":3}`,
		`{"room_id":"!r:a.test","event_ids":["$a"]} {}`,
		`{"event_ids":` + strings.Repeat(`[`, 5000) + `}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := decodeMissingParams(raw)
		if err != nil {
			return
		}
		if p.RoomID == "" || p.Limit < 0 || len(p.EarliestEvents) > maxMissingEvents {
			t.Fatalf("accepted unbounded params %+v", p)
		}
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		q, err := decodeMissingParams(again)
		if err != nil || q.RoomID != p.RoomID || q.Limit != p.Limit || len(q.EventIDs) != len(p.EventIDs) || len(q.EarliestEvents) != len(p.EarliestEvents) {
			t.Fatalf("re-encoded params decode differently: %+v, %v", q, err)
		}
	})
}
