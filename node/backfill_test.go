package node

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// fakeHome answers backfill like a room's home org would, from its full list of events. The
// embedded RemoteRooms is nil: only Backfill is called.
type fakeHome struct {
	RemoteRooms
	events []*event.Event // the home org's, oldest first
	err    error
	asked  []string
}

func (f *fakeHome) Backfill(_ context.Context, roomID, before string, limit int) ([]*event.Event, error) {
	f.asked = append(f.asked, before)
	if f.err != nil {
		return nil, f.err
	}
	end := slices.IndexFunc(f.events, func(e *event.Event) bool { return e.EventID == before })
	if end < 0 {
		return nil, errors.New("unknown event")
	}
	var out []*event.Event
	for _, e := range f.events[max(0, end-limit):end] {
		out = append(out, e.Clone())
	}
	return out, nil
}

func remoteEvent(t *testing.T, room, sender, typ string, stateKey *string, content string, prev *event.Event) *event.Event {
	t.Helper()
	e := &event.Event{RoomID: room, Sender: sender, Origin: sender[strings.IndexByte(sender, ':')+1:], OriginTS: time.Now().UnixMilli(),
		Type: typ, StateKey: stateKey, Content: json.RawMessage(content), PrevEvents: []string{}, Depth: 1}
	if prev != nil {
		e.PrevEvents, e.Depth = []string{prev.EventID}, prev.Depth+1
	}
	if err := event.Seal(e); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestHistoryBackfillsRemoteRoom: a room of home.test of which this org stores the state and
// the recent events (as after a join) pages back through the stored events, then through
// backfill, to the creation, every event once; with the home org unreachable, history ends
// with the stored events and no error.
func TestHistoryBackfillsRemoteRoom(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	const room = "!remote:home.test"
	bob := "@bob:test.local"
	empty, alice := "", "@alice:home.test"
	var home []*event.Event
	add := func(sender, typ string, key *string, content string) *event.Event {
		var prev *event.Event
		if len(home) > 0 {
			prev = home[len(home)-1]
		}
		e := remoteEvent(t, room, sender, typ, key, content, prev)
		home = append(home, e)
		return e
	}
	add(alice, "m.room.create", &empty, `{"creator":"@alice:home.test","federate":true,"visibility":"public"}`)
	add(alice, "m.room.member", &alice, `{"membership":"join"}`)
	add(alice, "m.room.power_levels", &empty, `{"users":{"@alice:home.test":100}}`)
	for i := 0; i < 12; i++ {
		add(alice, "m.room.message", nil, `{"body":"m`+string(rune('a'+i))+`","msgtype":"m.text"}`)
	}
	add(bob, "m.room.member", &bob, `{"membership":"join"}`)
	// What a join brings: the state, and the 5 most recent events.
	var snapshot []*event.Event
	for _, e := range append(slices.Clone(home[:3]), home[len(home)-5:]...) {
		snapshot = append(snapshot, e.Clone())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := n.srv.cluster.ProposeBatch(ctx, []*state.Command{{Kind: state.KindRemoteRoom,
		RemoteRoom: &state.RemoteRoom{RoomID: room, Events: snapshot}}})
	if err != nil || !res[0].OK() {
		t.Fatalf("store the remote room: %v %+v", err, res)
	}
	fake := &fakeHome{events: home}
	n.srv.remote = fake // before any session: nothing reads it concurrently
	s := &session{srv: n.srv, log: testLogger(t), user: bob}
	page := func(before string, limit int) ([]*event.Event, string) {
		t.Helper()
		out, oerr := opHistory(s, &request{RoomID: room, Before: before, Limit: &limit})
		if oerr != nil {
			t.Fatalf("history before %q: %v", before, oerr)
		}
		start, _ := out["start"].(string)
		return out["events"].([]*event.Event), start
	}

	first, start := page("", 50)
	if len(first) != 5 || first[0].EventID != home[len(home)-5].EventID || start != "b"+first[0].EventID {
		t.Fatalf("first page: %d events, start %q; want the 5 recent ones and a b token", len(first), start)
	}
	for _, limit := range []int{1, 2, 3, 50, 100} {
		var got []string
		before := ""
		for i := 0; ; i++ {
			if i > 50 {
				t.Fatalf("limit %d: history does not end", limit)
			}
			events, start := page(before, limit)
			var ids []string
			for _, e := range events {
				ids = append(ids, e.EventID)
			}
			got = append(ids, got...)
			if start == "" {
				break
			}
			before = start
		}
		var want []string
		for _, e := range home {
			want = append(want, e.EventID)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("limit %d: paged %d events, want the home org's %d in order", limit, len(got), len(want))
		}
	}
	// Stored events come back as stored (with their position), backfilled ones without.
	older, _ := page(start, 100)
	for _, e := range older {
		stored := slices.ContainsFunc(snapshot, func(x *event.Event) bool { return x.EventID == e.EventID })
		if stored != (e.StreamPos > 0) {
			t.Fatalf("event %s (%s): stored %v, stream_pos %d", e.EventID, e.Type, stored, e.StreamPos)
		}
	}

	// The same events, the stored state events, answer a page that reaches the room's
	// beginning through the home org: that one is complete, the fallback is not.
	limit := 100
	if out, oerr := opHistory(s, &request{RoomID: room, Before: start, Limit: &limit}); oerr != nil || out["incomplete"] != nil {
		t.Fatalf("a page from the home org: incomplete %v, %v", out["incomplete"], oerr)
	}
	fake.err = errors.New("home.test did not answer backfill in time")
	fallback, more := page(start, 100)
	if more != "" || len(fallback) != 3 || fallback[0].Type != "m.room.create" {
		t.Fatalf("with the home org unreachable: %d events, start %q; want the 3 stored state events", len(fallback), more)
	}
	if out, _ := opHistory(s, &request{RoomID: room, Before: start, Limit: &limit}); out["incomplete"] != true {
		t.Fatalf("with the home org unreachable: incomplete %v, want true (a client could not tell it from the beginning)", out["incomplete"])
	}
	for _, bad := range []string{"b", "b$", "bx", "b$a b", "b$" + strings.Repeat("a", 300), "b$a\"b"} {
		if _, oerr := opHistory(s, &request{RoomID: room, Before: bad}); oerr == nil || oerr.code != "M_INVALID_PARAM" {
			t.Errorf("before %q: %v, want M_INVALID_PARAM", bad, oerr)
		}
	}
	if id, ok := parseBackfillToken("b$abc-_XYZ09"); !ok || id != "$abc-_XYZ09" {
		t.Errorf("parseBackfillToken: %q %v", id, ok)
	}
}
