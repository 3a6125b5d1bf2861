package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/parley-chat/parley/consensus/event"
)

// Backfill: history from before this org joined a room of another org. A joining org gets the
// room's state and its 50 most recent events (send_join); everything older stays with the orgs
// that were in the room. When a client pages back past what this org holds, the node asks the
// room's home org with a signed `backfill` request for the events before the oldest one it has,
// verifies each returned event like any relayed one, and hands them to the client. The events
// are not stored: putting them in this org's stream would give them stream positions after the
// newest events, which sync and history would then show as new.

const (
	// MaxBackfillEvents bounds one backfill answer: a history page's largest limit.
	MaxBackfillEvents = 100
	// maxBackfillIDs bounds the event ids of one request (the requester sends one).
	maxBackfillIDs = 20
	// maxBackfillAnswerBytes bounds the events of one answer (their JSON), well under the
	// 8 MiB a response may have, so that a page of large messages still crosses the broker.
	maxBackfillAnswerBytes = 4 << 20
	// backfillTimeout is how long a client's history request waits for the home org.
	backfillTimeout = 10 * time.Second
)

type backfillParams struct {
	RoomID   string   `json:"room_id"`
	EventIDs []string `json:"event_ids"` // page back from the oldest of these the answerer has
	Limit    int      `json:"limit"`
}

type backfillResult struct {
	Events []*event.Event `json:"events"` // oldest first, in the answering org's stream order
}

// validID reports whether id is a plausible room or event id: its sigil, then 1-254 bytes of
// printable ASCII. It only keeps hostile strings out of lookups and logs.
func validID(id string, sigil byte) bool {
	if len(id) < 2 || len(id) > 255 || id[0] != sigil {
		return false
	}
	for i := 1; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// decodeBackfillParams parses and bounds the params of a backfill request (untrusted input).
func decodeBackfillParams(raw []byte) (*backfillParams, error) {
	if len(raw) > MaxMessageBytes {
		return nil, fmt.Errorf("backfill params of %d bytes are over %d", len(raw), MaxMessageBytes)
	}
	var p backfillParams
	if err := decodeStrict(raw, &p); err != nil {
		return nil, fmt.Errorf("bad backfill params: %w", err)
	}
	switch {
	case !validID(p.RoomID, '!'):
		return nil, errors.New("backfill needs a room_id")
	case len(p.EventIDs) == 0 || len(p.EventIDs) > maxBackfillIDs:
		return nil, fmt.Errorf("backfill needs 1-%d event_ids", maxBackfillIDs)
	case p.Limit < 1 || p.Limit > MaxBackfillEvents:
		return nil, fmt.Errorf("backfill limit is 1-%d", MaxBackfillEvents)
	}
	for _, id := range p.EventIDs {
		if !validID(id, '$') {
			return nil, fmt.Errorf("backfill event id %.40q is not an event id", id)
		}
	}
	return &p, nil
}

// decodeBackfillResult parses and bounds a backfill answer (untrusted input). The events in it
// are checked one by one afterwards (checkBackfilled).
func decodeBackfillResult(raw []byte) (*backfillResult, error) {
	if len(raw) > 8*MaxMessageBytes {
		return nil, fmt.Errorf("backfill answer of %d bytes is too large", len(raw))
	}
	var r backfillResult
	if err := decodeStrict(raw, &r); err != nil {
		return nil, fmt.Errorf("bad backfill answer: %w", err)
	}
	if r.Events == nil {
		return nil, errors.New("backfill answer without events")
	}
	if len(r.Events) > MaxBackfillEvents {
		return nil, fmt.Errorf("backfill answer of %d events is over %d", len(r.Events), MaxBackfillEvents)
	}
	for i, e := range r.Events {
		if e == nil {
			return nil, fmt.Errorf("backfill event %d is null", i)
		}
	}
	return &r, nil
}

// Backfill asks the home org of roomID for up to limit events before the event beforeID, in
// the home org's order, and returns those that verify, oldest first. An event that does not
// verify is dropped (and logged); an error means the home org could not be asked or answered
// with something unusable.
func (s *Service) Backfill(ctx context.Context, roomID, beforeID string, limit int) ([]*event.Event, error) {
	home := roomOrg(roomID)
	if home == s.opts.Org {
		return nil, fmt.Errorf("federation: backfill: %s is a room of this org", roomID)
	}
	if _, ok := s.opts.Peers[home]; !ok {
		return nil, s.notPeer(home)
	}
	limit = min(max(limit, 1), MaxBackfillEvents)
	ctx, cancel := context.WithTimeout(ctx, backfillTimeout)
	defer cancel()
	var raw json.RawMessage
	if err := s.call(ctx, home, "backfill", backfillParams{RoomID: roomID, EventIDs: []string{beforeID}, Limit: limit}, &raw); err != nil {
		return nil, fmt.Errorf("federation: backfill from %s: %w", home, err)
	}
	res, err := decodeBackfillResult(raw)
	if err != nil {
		return nil, fmt.Errorf("federation: backfill from %s: %w", home, err)
	}
	events := res.Events
	if len(events) > limit {
		events = events[len(events)-limit:] // the ones nearest the point asked about
	}
	return s.checkBackfill("backfill", home, roomID, beforeID, events), nil
}

// checkBackfill keeps the events of an answer (op: backfill or send_join) that verify, each
// once, without the one asked about (beforeID), cleaned of anything the answering org could add
// outside the signatures.
func (s *Service) checkBackfill(op, home, roomID, beforeID string, events []*event.Event) []*event.Event {
	seen := map[string]bool{beforeID: true}
	out := make([]*event.Event, 0, len(events))
	for _, e := range events {
		if err := s.checkBackfilled(home, roomID, e); err != nil {
			id := ""
			if e != nil {
				id = e.EventID
			}
			s.log.Warn("federation: event of an answer dropped", "op", op, "from", home, "room_id", roomID, "event_id", id, "reason", err)
			continue
		}
		if seen[e.EventID] {
			continue
		}
		seen[e.EventID] = true
		c := e.Clone()
		c.StreamPos = 0 // positions are per org; the answerer's mean nothing here
		c.Unsigned = nil
		if because := s.checkRedactedBecause(roomID, e); because != nil {
			c.Unsigned = &event.Unsigned{RedactedBecause: because}
		}
		out = append(out, c)
	}
	return out
}

// checkBackfilled verifies one event of a backfill or send_join answer: that it is of the room, its
// reference-hash id and content hash, its origin's signature (this org's own key for its own
// events, which a backfill can bring back too), that its sender belongs to its origin, and its
// content by the client rules. Unlike a relayed event, the room's m.room.create is expected here;
// only the home org can have made it.
func (s *Service) checkBackfilled(home, roomID string, e *event.Event) error {
	if e == nil {
		return errors.New("null event")
	}
	if e.RoomID != roomID {
		return fmt.Errorf("event of room %.80q, not %s", e.RoomID, roomID)
	}
	if err := event.Check(e); err != nil {
		return err
	}
	keys, ok := s.originKeys(e.Origin)
	if !ok {
		return fmt.Errorf("unknown origin %.80q", e.Origin)
	}
	if err := verifyEvent(e, e.Origin, keys); err != nil {
		return err
	}
	if userOrg(e.Sender) != e.Origin {
		return fmt.Errorf("sender %.80q is not of origin %s", e.Sender, e.Origin)
	}
	if e.Type == "m.room.create" {
		if e.Origin != home {
			return fmt.Errorf("m.room.create of %s in a room of %s", e.Origin, home)
		}
		return nil
	}
	return checkContent(e)
}

// checkRedactedBecause returns the redaction that redacted e, when the answer carries one that
// verifies; otherwise none, since the redacted content stands on its own signature anyway.
func (s *Service) checkRedactedBecause(roomID string, e *event.Event) *event.Event {
	if e.Unsigned == nil || e.Unsigned.RedactedBecause == nil {
		return nil
	}
	r := e.Unsigned.RedactedBecause
	keys, ok := s.originKeys(r.Origin)
	if !ok || r.Type != "m.room.redaction" || r.Redacts != e.EventID || r.RoomID != roomID ||
		event.Check(r) != nil || verifyEvent(r, r.Origin, keys) != nil || userOrg(r.Sender) != r.Origin {
		s.log.Warn("federation: backfilled redaction dropped", "event_id", e.EventID)
		return nil
	}
	c := r.Clone()
	c.StreamPos, c.Unsigned = 0, nil
	return c
}

// originKeys are the keys that sign the events of org: a peer's configured keys, or this
// org's own.
func (s *Service) originKeys(org string) (PeerKey, bool) {
	if peer, ok := s.opts.Peers[org]; ok {
		return peer, true
	}
	if org == s.opts.Org {
		return s.ownKeys()
	}
	return PeerKey{}, false
}

// ownKeys are this org's current signing key and its previous ones (federation.previous_keys).
func (s *Service) ownKeys() (PeerKey, bool) {
	if s.opts.Keys == nil {
		return PeerKey{}, false
	}
	key, ok := s.opts.Keys.Current()
	if !ok {
		return PeerKey{}, false
	}
	return PeerKey{KeyID: key.KeyID, Public: key.Private.Public().(ed25519.PublicKey), Previous: s.opts.PreviousKeys}, true
}

// backfill answers a backfill request: up to limit events of the room before the oldest of the
// named events this org has, oldest first, for an org with a joined member in the room.
func (s *Service) backfill(origin string, p *backfillParams) (any, *Error) {
	store := s.opts.Cluster.Store()
	room, ok := store.Room(p.RoomID)
	if !ok || !room.Federate {
		return nil, &Error{Code: "M_NOT_FOUND", Message: "no such federated room"}
	}
	if !contains(store.JoinedOrgs(p.RoomID, s.opts.Org), origin) {
		return nil, &Error{Code: "M_FORBIDDEN", Message: "your org has no member in the room"}
	}
	var before int64
	for _, id := range p.EventIDs {
		if e, ok := store.Event(id); ok && e.RoomID == p.RoomID && e.StreamPos > 0 && (before == 0 || e.StreamPos < before) {
			before = e.StreamPos
		}
	}
	if before == 0 {
		return nil, &Error{Code: "M_NOT_FOUND", Message: "none of the events is known in the room"}
	}
	events, _, err := store.History(p.RoomID, before, p.Limit)
	if err != nil {
		return nil, &Error{Code: "M_UNKNOWN", Message: "read history: " + err.Error()}
	}
	// Keep the newest events that fit the size bound; the requester pages on from the oldest.
	size := 0
	first := len(events)
	for i := len(events) - 1; i >= 0; i-- {
		c, err := s.outgoingPDU(events[i])
		if err != nil {
			return nil, unavailable("%v", err)
		}
		events[i] = c
		raw, err := json.Marshal(events[i])
		if err != nil {
			return nil, &Error{Code: "M_UNKNOWN", Message: "encode event: " + err.Error()}
		}
		if size+len(raw) > maxBackfillAnswerBytes && i < len(events)-1 {
			break
		}
		size += len(raw)
		first = i
	}
	return backfillResult{Events: append([]*event.Event{}, events[first:]...)}, nil
}
