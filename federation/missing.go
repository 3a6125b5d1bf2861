package federation

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/parley-chat/parley/consensus/event"
)

// Gap repair: an event whose prev_events this org lacks (a transaction lost by a broker, say)
// makes the inbox ask the sending org for the missing events before it applies the event, so
// every org ends with the same events per room after an outage.

const (
	maxMissingRounds = 5   // how far back one repair walks
	maxMissingEvents = 100 // events fetched per round
)

type missingParams struct {
	RoomID   string   `json:"room_id"`
	EventIDs []string `json:"event_ids"`
}

type missingResult struct {
	Events []*event.Event `json:"events"`
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
	store := s.opts.Cluster.Store()
	have := map[string]bool{}
	for _, p := range pdus {
		have[p.EventID] = true
	}
	frontier := pdus
	for round := 0; round < maxMissingRounds && len(frontier) > 0; round++ {
		byRoom := map[string][]string{}
		for _, p := range frontier {
			for _, prev := range p.PrevEvents {
				if have[prev] {
					continue
				}
				have[prev] = true
				if _, ok := store.Event(prev); !ok {
					byRoom[p.RoomID] = append(byRoom[p.RoomID], prev)
				}
			}
		}
		frontier = nil
		if !ask && len(byRoom) > 0 {
			return nil, false, true
		}
		for room, ids := range byRoom {
			if len(ids) > maxMissingEvents {
				ids = ids[:maxMissingEvents]
			}
			var res missingResult
			requested = true
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := s.call(cctx, org, "get_missing_events", missingParams{RoomID: room, EventIDs: ids}, &res)
			cancel()
			if err != nil {
				s.log.Warn("federation: could not fetch missing events", "from", org, "room_id", room, "count", len(ids), "err", err)
				var fe *Error
				if !errors.As(err, &fe) || fe.Code == "M_UNAVAILABLE" {
					unanswered = true
				}
				continue
			}
			for _, e := range res.Events {
				if e == nil || e.RoomID != room || !contains(ids, e.EventID) {
					continue
				}
				if err := s.checkPDU(org, e); err != nil {
					s.log.Warn("federation: fetched event dropped", "event_id", e.EventID, "reason", err)
					continue
				}
				fetched = append(fetched, e)
				frontier = append(frontier, e)
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

// gapOutages remembers, per origin, when its get_missing_events first went unanswered. The
// transactions that arrive behind a lost one all build on it, and each would otherwise wait
// for the org anew (10 s per request) and spend its own retries: the whole inbox, which also
// answers other orgs' requests, would stall for minutes. So the org is asked at most once per
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
// last member left since still repairs a gap from before).
func (s *Service) missingEvents(origin string, p missingParams) (any, *Error) {
	store := s.opts.Cluster.Store()
	joinedNow := contains(store.JoinedOrgs(p.RoomID, s.opts.Org), origin)
	out := missingResult{Events: []*event.Event{}}
	refused := 0
	for i, id := range p.EventIDs {
		if i == maxMissingEvents {
			break
		}
		e, ok := store.Event(id)
		if !ok || e.RoomID != p.RoomID {
			continue
		}
		if !joinedNow {
			if orgs, recorded := store.JoinedOrgsAt(e.StreamPos); !recorded || !contains(orgs, origin) {
				refused++
				continue
			}
		}
		c, err := s.outgoingPDU(e)
		if err != nil {
			return nil, unavailable("%v", err)
		}
		out.Events = append(out.Events, c)
	}
	if !joinedNow && len(out.Events) == 0 && refused > 0 {
		return nil, &Error{Code: "M_FORBIDDEN", Message: "your org has no member in the room"}
	}
	return out, nil
}
