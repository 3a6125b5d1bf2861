package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/parley-chat/parley/consensus/event"
)

// Gap repair: an event whose prev_events this org lacks (a transaction lost by a broker, say)
// makes the inbox ask the sending org for the missing events before it applies the event, so
// every org ends with the same events per room after an outage.
//
// Each event names one prev_event (the room's previous event at its origin, node/ops.go), so a
// gap is a chain. The answering org walks it back (missingEvents), as Matrix's
// get_missing_events does: from the events asked for through prev_events, up to a limit,
// stopping at the requester's latest events. One request repairs a gap of up to
// maxMissingEvents events; until 2026-12-07 each round fetched only the ids it named, one event,
// and a gap of more than maxMissingRounds events stayed for good.

const (
	maxMissingRounds = 5   // how many requests one repair makes, each walking further back
	maxMissingEvents = 100 // events fetched per round
	// earliestMissing is how many of its latest events in the room the requester names as
	// earliest_events: where the walk stops. More than one, since orgs that send at the same
	// moment fork the chain for an event or two.
	earliestMissing = 20
	// maxMissingAnswerBytes bounds the events of one answer (their JSON), as for backfill:
	// 100 events of the largest content would not cross the broker as one response.
	maxMissingAnswerBytes = maxBackfillAnswerBytes
)

// missingParams are the params of get_missing_events. EarliestEvents and Limit are optional,
// added on 2026-12-07: with a limit the answer walks back from EventIDs (missingEvents); without
// one, as a requester from before sends it, it holds exactly the events of EventIDs.
type missingParams struct {
	RoomID         string   `json:"room_id"`
	EventIDs       []string `json:"event_ids"`
	EarliestEvents []string `json:"earliest_events,omitempty"` // the requester has these: the walk stops there
	Limit          int      `json:"limit,omitempty"`           // events in the answer, at most maxMissingEvents
}

type missingResult struct {
	Events []*event.Event `json:"events"`
}

// decodeMissingParams parses and bounds the params of get_missing_events (untrusted input).
func decodeMissingParams(raw []byte) (*missingParams, error) {
	var p missingParams
	if err := decodeStrict(raw, &p); err != nil {
		return nil, fmt.Errorf("bad get_missing_events params: %w", err)
	}
	switch {
	case p.RoomID == "":
		return nil, errors.New("get_missing_events needs room_id and event_ids")
	case p.Limit < 0:
		return nil, errors.New("get_missing_events limit is not negative")
	case len(p.EarliestEvents) > maxMissingEvents:
		return nil, fmt.Errorf("get_missing_events takes at most %d earliest_events", maxMissingEvents)
	}
	return &p, nil
}

// fillGaps fetches, from org, the events that pdus name as prev_events but this org does not
// have (walking back a bounded number of rounds), verified, oldest first. Errors only shrink
// the repair. unanswered reports that a request failed for a reason that may pass (org or the
// broker down, a timeout: M_UNAVAILABLE), so that asking again later could still close the gap;
// a refusal (M_FORBIDDEN, M_NOT_FOUND) would be given again and is not.
//
// With ask false nothing is requested: a gap is then reported as unanswered at once (an org in
// an outage, see gapOutages).
func (s *Service) fillGaps(ctx context.Context, org string, pdus []*event.Event, ask bool) (fetched []*event.Event, requested, unanswered bool) {
	got := map[string]bool{}   // among pdus or fetched: stored with them
	asked := map[string]bool{} // asked for, or got: never asked for (again)
	for _, p := range pdus {
		got[p.EventID], asked[p.EventID] = true, true
	}
	frontier := pdus
rounds:
	for round := 0; round < maxMissingRounds && len(frontier) > 0; round++ {
		byRoom := s.missingPrevs(frontier, asked)
		frontier = nil
		if !ask && len(byRoom) > 0 {
			return nil, false, true
		}
		for room, ids := range byRoom {
			if len(ids) > maxMissingEvents {
				ids = ids[:maxMissingEvents]
			}
			requested = true
			events, err := s.getMissing(ctx, org, room, ids)
			if err != nil {
				s.log.Warn("federation: could not fetch missing events", "from", org, "room_id", room, "count", len(ids), "err", err)
				var fe *Error
				if !errors.As(err, &fe) || fe.Code == "M_UNAVAILABLE" {
					// The org (or the broker) does not answer: it will not for the transaction's
					// next room either, and each request would hold the transaction worker
					// another 10 s, every org's transactions behind it waiting (a transaction with
					// gaps in N rooms held it N×10 s at every probe of gapOutages).
					unanswered = true
					break rounds
				}
				continue
			}
			for _, e := range s.acceptMissing(org, room, events, got) {
				got[e.EventID], asked[e.EventID] = true, true
				fetched = append(fetched, e)
				frontier = append(frontier, e) // what these build on may be missing too
			}
		}
	}
	// Oldest first, so nothing is stored before one of its prev_events.
	sort.SliceStable(fetched, func(i, j int) bool { return fetched[i].Depth < fetched[j].Depth })
	if len(fetched) > 0 {
		s.log.Info("federation: repaired a gap", "from", org, "events", len(fetched))
	}
	return fetched, requested, unanswered
}

// missingPrevs lists, by room, the prev_events of events that this org neither has nor asked
// for yet (asked), and marks them asked for.
func (s *Service) missingPrevs(events []*event.Event, asked map[string]bool) map[string][]string {
	store := s.opts.Cluster.Store()
	byRoom := map[string][]string{}
	for _, p := range events {
		for _, prev := range p.PrevEvents {
			if asked[prev] {
				continue
			}
			asked[prev] = true
			if _, ok := store.Event(prev); !ok {
				byRoom[p.RoomID] = append(byRoom[p.RoomID], prev)
			}
		}
	}
	return byRoom
}

// getMissing asks org for the events ids of room and, walking back, those they build on up to
// this org's latest events in the room. A peer from before 2026-12-07 refuses the walk's fields
// with M_BAD_JSON (its decoder allows no unknown field): it is asked again for exactly ids, and
// the rounds of fillGaps walk back one event at a time, as before.
func (s *Service) getMissing(ctx context.Context, org, room string, ids []string) ([]*event.Event, error) {
	p := missingParams{RoomID: room, EventIDs: ids, EarliestEvents: s.latestEvents(room), Limit: maxMissingEvents}
	events, err := s.callMissing(ctx, org, p)
	var fe *Error
	if errors.As(err, &fe) && fe.Code == "M_BAD_JSON" {
		s.log.Info("federation: peer does not walk get_missing_events back, asking for the exact events", "from", org, "room_id", room)
		events, err = s.callMissing(ctx, org, missingParams{RoomID: room, EventIDs: ids})
	}
	return events, err
}

// callMissing sends one get_missing_events request and waits for its answer.
func (s *Service) callMissing(ctx context.Context, org string, p missingParams) ([]*event.Event, error) {
	var res missingResult
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.call(cctx, org, "get_missing_events", p, &res); err != nil {
		return nil, err
	}
	return res.Events, nil
}

// latestEvents are the ids of this org's latest events in room (earliestMissing of them).
func (s *Service) latestEvents(room string) []string {
	events, _, err := s.opts.Cluster.Store().History(room, 0, earliestMissing)
	if err != nil {
		s.log.Warn("federation: read the room's latest events", "room_id", room, "err", err)
		return nil
	}
	ids := make([]string, 0, len(events))
	for _, e := range events {
		ids = append(ids, e.EventID)
	}
	return ids
}

// acceptMissing keeps the events of org's answer to get_missing_events for room that this org
// should store: of the room, neither stored nor fetched already (got), and verified against
// their own origin (checkFetched). An answer holds the events asked for and those they build on
// (the walk of missingEvents); a peer from before 2026-12-07 answers only the first.
func (s *Service) acceptMissing(org, room string, events []*event.Event, got map[string]bool) []*event.Event {
	store := s.opts.Cluster.Store()
	var out []*event.Event
	seen := map[string]bool{}
	for _, e := range events {
		if e == nil || e.RoomID != room || got[e.EventID] || seen[e.EventID] {
			continue
		}
		seen[e.EventID] = true
		if _, stored := store.Event(e.EventID); stored {
			continue
		}
		if err := s.checkFetched(org, e); err != nil {
			s.log.Warn("federation: fetched event dropped", "from", org, "event_id", e.EventID, "reason", err)
			continue
		}
		out = append(out, e)
	}
	return out
}

// gapOutages remembers, per origin, when its get_missing_events first went unanswered. The
// transactions that arrive behind a lost one all build on it, and each would otherwise wait
// for the org anew (10 s per request) and spend its own retries: the inbox's transaction
// worker, and every org's transactions behind it, would stall for minutes (requests have a
// worker of their own: dispatch.go). So the org is asked at most once per
// gapProbeEvery while it does not answer (gapProbeAfterWindow later on), and once
// gapRepairWindow has passed since it stopped answering, its transactions are applied with
// their gaps. An answer ends the outage. It is kept in memory: a restart gives the org a new
// window.
type gapOutages struct {
	mu   sync.Mutex
	orgs map[string]*gapOutage
}

type gapOutage struct{ since, lastAsked time.Time }

const (
	gapRepairWindow = 45 * time.Second
	gapProbeEvery   = 5 * time.Second
	// Past the window the org is asked more rarely: each request may hold the inbox 10 s.
	gapProbeAfterWindow = time.Minute
	gapRepairPause      = 500 * time.Millisecond // before a requeue: the transaction comes back soon
)

// ask reports whether org should be sent get_missing_events now.
func (g *gapOutages) ask(org string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	o := g.orgs[org]
	if o == nil {
		return true
	}
	every := gapProbeEvery
	if now.Sub(o.since) >= gapRepairWindow {
		every = gapProbeAfterWindow
	}
	return now.Sub(o.lastAsked) >= every
}

// record notes the outcome of a gap repair with org (requested: a request was sent). It
// reports whether the transaction should wait for org (requeued) rather than be applied with
// its gap. Only an answer ends an outage, not a transaction that needed none.
func (g *gapOutages) record(org string, requested, unanswered bool, now time.Time) (wait bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !unanswered {
		if requested {
			delete(g.orgs, org)
		}
		return false
	}
	o := g.orgs[org]
	if o == nil {
		if g.orgs == nil {
			g.orgs = map[string]*gapOutage{}
		}
		o = &gapOutage{since: now}
		g.orgs[org] = o
	}
	if requested {
		o.lastAsked = now
	}
	return now.Sub(o.since) < gapRepairWindow
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// missingEvents answers get_missing_events for an org that has a member in the room, or had one
// when the event asked for was committed (it was relayed there, or should have been: an org whose
// last member left since still repairs a gap from before). Each event is given under that rule.
func (s *Service) missingEvents(origin string, p *missingParams) (any, *Error) {
	store := s.opts.Cluster.Store()
	joinedNow := contains(store.JoinedOrgs(p.RoomID, s.opts.Org), origin)
	visible := func(e *event.Event) bool {
		if joinedNow {
			return true
		}
		orgs, recorded := store.JoinedOrgsAt(e.StreamPos)
		return recorded && contains(orgs, origin)
	}
	events, refused := walkMissing(p, store.Event, visible)
	if !joinedNow && len(events) == 0 && refused > 0 {
		return nil, &Error{Code: "M_FORBIDDEN", Message: "your org has no member in the room"}
	}
	out := missingResult{Events: []*event.Event{}}
	size := 0
	for _, e := range events {
		c, err := s.outgoingPDU(e)
		if err != nil {
			return nil, unavailable("%v", err)
		}
		raw, err := json.Marshal(c)
		if err != nil {
			return nil, &Error{Code: "M_UNKNOWN", Message: "encode event: " + err.Error()}
		}
		// The walk lists the newest first: the requester asks on from the oldest it got.
		if size += len(raw); size > maxMissingAnswerBytes && len(out.Events) > 0 {
			break
		}
		out.Events = append(out.Events, c)
	}
	return out, nil
}

// walkMissing lists the events of an answer to get_missing_events: those of p.EventIDs this org
// has in p.RoomID and, with p.Limit, the events they build on, breadth first back through
// prev_events, up to the limit. The walk stops at p.EarliestEvents (the requester has them), at
// events this org does not have or of another room, and at events the requester may not see
// (visible), which it counts in refused. Without a limit (a requester from before 2026-12-07) the
// answer is the events asked for, as it was.
func walkMissing(p *missingParams, get func(id string) (*event.Event, bool), visible func(*event.Event) bool) (out []*event.Event, refused int) {
	limit, walk := maxMissingEvents, p.Limit > 0
	if walk {
		limit = min(p.Limit, maxMissingEvents)
	}
	seen := map[string]bool{}
	for _, id := range p.EarliestEvents {
		seen[id] = true
	}
	queue := slices.Clone(p.EventIDs[:min(len(p.EventIDs), maxMissingEvents)])
	// Bounds the lookups too: a peer's event may name many prev_events this org lacks.
	for lookups := 0; len(queue) > 0 && len(out) < limit && lookups < 4*maxMissingEvents; lookups++ {
		id := queue[0]
		queue = queue[1:]
		if seen[id] {
			continue
		}
		seen[id] = true
		e, ok := get(id)
		if !ok || e.RoomID != p.RoomID {
			continue
		}
		if !visible(e) {
			refused++
			continue
		}
		out = append(out, e)
		if walk {
			queue = append(queue, e.PrevEvents...)
		}
	}
	return out, refused
}
