package node

import (
	"context"
	"strconv"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// History of a room of another org goes back past the point where this org joined it through
// federation `backfill` (see docs/federation.md). This org stores only what it received: the
// room's state and recent events at the join, and everything after. Where the events it holds
// stop chaining (an event whose prev_events are not stored here), a history page ends at that
// event with the start token "b<event_id>": the next page is the home org's events before that
// event, fetched, verified and passed on, not stored (a stored copy would get a stream position
// after the newest events and show up in sync as new).

// RemoteBackfill fetches verified events of a room of another org from its home org, the
// events before beforeID, oldest first. The federation service implements it besides
// RemoteRooms; a node without federation has none, and its history ends at what it stores.
type RemoteBackfill interface {
	Backfill(ctx context.Context, roomID, beforeID string, limit int) ([]*event.Event, error)
}

// backfillWait bounds how long a history request waits for the home org.
const backfillWait = 12 * time.Second

// backfiller is the backfill source of roomID, when it is a room of another org and
// federation can fetch its older events.
func (srv *Server) backfiller(roomID string) (RemoteBackfill, bool) {
	if _, remote := srv.remoteHome(roomID); !remote {
		return nil, false
	}
	b, ok := srv.remote.(RemoteBackfill)
	return b, ok
}

// parseBackfillToken reads a "b<event_id>" start token.
func parseBackfillToken(tok string) (string, bool) {
	if len(tok) < 3 || len(tok) > 256 || tok[0] != 'b' || tok[1] != '$' {
		return "", false
	}
	for i := 2; i < len(tok); i++ {
		c := tok[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", false
		}
	}
	return tok[1:], true
}

// historyStart cuts a page of stored events (oldest first) at a gap and gives its start token:
// for a room of another org, the newest event whose prev_events this org lacks ends the page
// (older stored events come back in the home org's answer, in their place) with "b<event_id>";
// otherwise "p<pos>" when more stored events remain, or none at the beginning of the room.
func (srv *Server) historyStart(roomID string, events []*event.Event, more bool) ([]*event.Event, string) {
	if _, ok := srv.backfiller(roomID); ok {
		if i := srv.newestGap(events); i >= 0 {
			return events[i:], "b" + events[i].EventID
		}
	}
	if more && len(events) > 0 {
		return events, "p" + strconv.FormatInt(events[0].StreamPos, 10)
	}
	return events, ""
}

// newestGap is the index of the newest event whose prev_events are not all stored here, or -1.
func (srv *Server) newestGap(events []*event.Event) int {
	store := srv.cluster.Store()
	known := make(map[string]bool, len(events))
	for _, e := range events {
		known[e.EventID] = true
	}
	for i := len(events) - 1; i >= 0; i-- {
		for _, prev := range events[i].PrevEvents {
			if known[prev] {
				continue
			}
			if _, ok := store.Event(prev); !ok {
				return i
			}
			known[prev] = true
		}
	}
	return -1
}

// historyBackfill answers history with a "b<event_id>" token: the home org's events before
// beforeID. If the home org cannot be asked, history goes on with what is stored here (so it
// ends where it would without backfill) and the failure is logged.
func (s *session) historyBackfill(roomID, beforeID string, limit int) (map[string]any, *opError) {
	if _, oerr := s.joinedRoom(roomID); oerr != nil {
		return nil, oerr
	}
	bf, ok := s.srv.backfiller(roomID)
	if !ok {
		return nil, invalid("before is not a start token")
	}
	ctx, cancel := context.WithTimeout(context.Background(), backfillWait)
	defer cancel()
	events, err := bf.Backfill(ctx, roomID, beforeID, limit)
	if err != nil {
		s.log.Warn("history: backfill from the home org failed; history goes on with the stored events only",
			"room_id", roomID, "before", beforeID, "user", s.user, "err", err)
		out, oerr := s.historyStoredBefore(roomID, beforeID, limit)
		if out != nil {
			// Said, so a client can tell this page from the room's beginning (whose stored
			// state events a successful backfill gives back with their stream_pos too) and
			// ask again with the same token.
			out["incomplete"] = true
		}
		return out, oerr
	}
	store := s.srv.cluster.Store()
	for i, e := range events {
		// The stored copy, when there is one: it has this org's stream position and redactions.
		if local, ok := store.Event(e.EventID); ok && local.RoomID == roomID {
			events[i] = local
		}
	}
	out := map[string]any{"events": s.visible(events)}
	if len(events) > 0 && len(events[0].PrevEvents) > 0 {
		out["start"] = "b" + events[0].EventID
	}
	return out, nil
}

// historyStoredBefore pages back through the stored events before beforeID, if it is stored.
func (s *session) historyStoredBefore(roomID, beforeID string, limit int) (map[string]any, *opError) {
	e, ok := s.srv.cluster.Store().Event(beforeID)
	if !ok || e.RoomID != roomID || e.StreamPos <= 0 {
		return map[string]any{"events": []*event.Event{}}, nil
	}
	events, more, err := s.srv.cluster.Store().History(roomID, e.StreamPos, limit)
	if err != nil {
		return nil, refuse("M_UNKNOWN", "read history: %v", err)
	}
	events, start := s.srv.historyStart(roomID, events, more)
	out := map[string]any{"events": s.visible(events)}
	if start != "" {
		out["start"] = start
	}
	return out, nil
}

// syncGap cuts a sync answer's events of a joined room of another org at a gap, like
// historyStart, so the client pages back through backfill instead of taking the events before
// the gap for the whole history.
func (s *session) syncGap(roomID string, events []*event.Event) ([]*event.Event, string) {
	if _, ok := s.srv.backfiller(roomID); !ok || len(events) == 0 {
		return events, ""
	}
	if s.srv.cluster.Store().Membership(roomID, s.user).Membership != state.Join {
		return events, "" // an invitee sees only the invite; a leaver what it saw
	}
	if i := s.srv.newestGap(events); i >= 0 {
		return events[i:], "b" + events[i].EventID
	}
	return events, ""
}
