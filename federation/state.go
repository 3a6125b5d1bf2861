package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/node/content"
)

// State changes of a room (membership, power levels, name, topic) are authorized and ordered
// by the room's home org (amqp.md). A local user's change in a room of another org is built and
// signed here as usual, then sent to the home org with a send_state request instead of being
// committed here first: the home org checks it like any incoming event, authorizes it against
// its own room state, commits it (its outbox then relays it to every participating org, this
// one included) and answers with the accepted event. Only then is it committed here, as the
// home org's relay brings it, in the home org's order. So the orgs cannot disagree about a
// state change the way they could when each committed its own users' changes first and
// relayed them afterwards.

type sendStateParams struct {
	Event *event.Event `json:"event"`
}

type sendStateResult struct {
	Event *event.Event `json:"event"`
}

// decodeSendState parses send_state parameters (untrusted input) and checks that they carry a
// state change another org may ask for: M_BAD_JSON for what does not parse, M_INVALID_PARAM
// for any other event. It knows nothing of the rooms: the caller checks the event itself
// (hashes, signature, origin) and the room rules decide the rest.
func decodeSendState(params []byte) (*event.Event, *Error) {
	var p sendStateParams
	if err := decodeStrict(params, &p); err != nil {
		return nil, &Error{Code: "M_BAD_JSON", Message: "bad send_state params: " + err.Error()}
	}
	if p.Event == nil {
		return nil, &Error{Code: "M_BAD_JSON", Message: "send_state needs an event"}
	}
	if err := checkStateChange(p.Event); err != nil {
		return nil, &Error{Code: "M_INVALID_PARAM", Message: err.Error()}
	}
	return p.Event, nil
}

// checkStateChange refuses events that are not a state change a remote org asks the home org
// for: joins have their own requests (make_join and send_join, which answer with the room), and
// m.room.create never comes from another org.
func checkStateChange(e *event.Event) error {
	if e.StateKey == nil {
		return errors.New("send_state needs a state event (with a state_key)")
	}
	switch {
	case content.StateTypes[e.Type]:
		if *e.StateKey != "" {
			return fmt.Errorf("%s needs an empty state_key", e.Type)
		}
		return nil
	case e.Type == "m.room.member":
		var c struct {
			Membership string `json:"membership"`
		}
		if err := json.Unmarshal(e.Content, &c); err != nil {
			return errors.New("bad member content")
		}
		switch c.Membership {
		case state.Leave, state.Ban, state.Invite:
			return nil
		case state.Join:
			return errors.New("joins go through make_join and send_join")
		}
		return fmt.Errorf("unknown membership %q", c.Membership)
	}
	return fmt.Errorf("%s is not a state change another org may send", e.Type)
}

// isStateEvent reports whether e changes room state (it has a state_key).
func isStateEvent(e *event.Event) bool { return e.StateKey != nil }

// isJoin reports whether e is a member event with membership join.
func isJoin(e *event.Event) bool {
	if e.Type != "m.room.member" {
		return false
	}
	var c struct {
		Membership string `json:"membership"`
	}
	return json.Unmarshal(e.Content, &c) == nil && c.Membership == state.Join
}

// SendState asks the home org of e's room to authorize and commit e, a state change a local
// user made, and returns once it is committed here too: from the home org's relay, or from its
// answer when the relay is late. A refusal comes back with the home org's code; a home org that
// does not answer in time gives M_UNAVAILABLE, and nothing is committed here.
func (s *Service) SendState(ctx context.Context, e *event.Event) error {
	home := roomOrg(e.RoomID)
	if home == s.opts.Org {
		return &Error{Code: "M_INVALID_PARAM", Message: "the room is this org's own: commit its state changes directly"}
	}
	if _, ok := s.opts.Peers[home]; !ok {
		return s.notPeer(home)
	}
	if e.Origin != s.opts.Org || userOrg(e.Sender) != s.opts.Org {
		return &Error{Code: "M_INVALID_PARAM", Message: "only this org's own events can be sent to the home org"}
	}
	if err := checkStateChange(e); err != nil {
		return &Error{Code: "M_INVALID_PARAM", Message: err.Error()}
	}
	out, err := s.outgoingPDU(e)
	if err != nil {
		return unavailable("%v", err)
	}
	var res sendStateResult
	if err := s.call(ctx, home, "send_state", sendStateParams{Event: out}, &res); err != nil {
		var fe *Error
		if errors.As(err, &fe) && fe.Code != "M_UNAVAILABLE" {
			return &Error{Code: fe.Code, Message: home + " refused the change: " + fe.Message}
		}
		return err
	}
	// The home org signs its answer, but the event is this org's own: it must come back as
	// sent (same reference hash), or the home org committed something else.
	if res.Event == nil || res.Event.EventID != e.EventID {
		return unavailable("%s answered send_state with another event", home)
	}
	// The home org relays the accepted event back here too, in its order among the room's
	// other changes. Committed from the answer, it could land before changes the home org made
	// just before it whose relay is still on its way, and those would then win here. So the
	// relay is waited for, and the answer committed only when the relay is late.
	if !s.awaitRelay(ctx, e.EventID, relayWait) {
		if err := s.commitAccepted(ctx, e); err != nil {
			return err
		}
	}
	s.log.Info("federation: state change accepted by the home org", "room_id", e.RoomID, "event_id", e.EventID,
		"type", e.Type, "home", home)
	return nil
}

// relayWait bounds how long SendState waits for the home org's relay of an accepted change
// before committing it from the answer (the relay takes a few milliseconds when the broker and
// the inbox keep up).
const relayWait = 5 * time.Second

// awaitRelay reports whether the event is committed here within wait (or ctx), as the home
// org's relay brings it.
func (s *Service) awaitRelay(ctx context.Context, eventID string, wait time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	store := s.opts.Cluster.Store()
	for {
		_, changed := s.opts.Cluster.AppliedNotify() // before the look: no apply slips between
		if _, ok := store.Event(eventID); ok {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// commitAccepted commits a state change the home org accepted. This org's view of the room may
// lag behind the home org's (the power levels that allow the change may still be on their
// way), so the room rules here could refuse what the home org has already committed. The event
// is therefore stored as the home org's word, like a joined room's state: through the
// remote_room command, which stores the events it carries without authorizing them again and
// skips those already present (the room's create event, which the command needs first). A room
// without a create event here is one known only through an invite (see consensus/state/invite.go).
func (s *Service) commitAccepted(ctx context.Context, e *event.Event) error {
	store := s.opts.Cluster.Store()
	if _, dup := store.Event(e.EventID); dup {
		return nil // the home org's relay was faster than its answer
	}
	st, err := store.RoomState(e.RoomID)
	if err != nil {
		return unavailable("read the state of %s: %v", e.RoomID, err)
	}
	var create *event.Event
	for _, se := range st {
		if se.Type == "m.room.create" {
			create = stored(se)
		}
	}
	cmd := &state.Command{Kind: state.KindRemoteRoom,
		RemoteRoom: &state.RemoteRoom{RoomID: e.RoomID, Events: []*event.Event{create, stored(e)}}}
	if create == nil {
		// A room known here only through an invite has no state to lag behind: its own rules
		// take the invitee's answer as an ordinary event.
		cmd = &state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: stored(e)}}
	}
	results, err := s.opts.Cluster.ProposeBatch(ctx, []*state.Command{cmd})
	if err != nil {
		// The home org has it: its relay brings it here once this org can commit again.
		return unavailable("%s accepted the change, but it is not committed here yet: %v", roomOrg(e.RoomID), err)
	}
	if !results[0].OK() {
		return &Error{Code: results[0].Code, Message: results[0].Message}
	}
	return nil
}

// sendState answers send_state as the room's home org: the event is checked like any incoming
// event, then committed through this org's log, where the room rules decide against this
// org's current room state. The outbox relays what is committed to every participating org.
func (s *Service) sendState(ctx context.Context, origin string, e *event.Event) (any, *Error) {
	if rerr := s.commitFromOrg(ctx, origin, e, "state change"); rerr != nil {
		return nil, rerr
	}
	// A repeated request (the first answer was lost) finds the event committed: same answer.
	return sendStateResult{Event: wirePDU(e)}, nil
}

// commitFromOrg is the home org's side of send_state and send_leave: an event another org
// asks this org to commit in one of its rooms is checked like any incoming event, then
// committed through this org's log, where the room rules decide against this org's current
// room state. An event already committed (a repeated request) is accepted again.
func (s *Service) commitFromOrg(ctx context.Context, origin string, e *event.Event, what string) *Error {
	if e.Origin != origin {
		return &Error{Code: "M_FORBIDDEN", Message: "not an event of the requesting org"}
	}
	if _, rerr := s.localRoom(e.RoomID); rerr != nil {
		return rerr
	}
	if err := s.checkPDU(origin, e); err != nil {
		return &Error{Code: "M_FORBIDDEN", Message: err.Error()}
	}
	if _, known := s.opts.Cluster.Store().Event(e.EventID); known {
		return nil
	}
	results, err := s.opts.Cluster.ProposeBatch(ctx, []*state.Command{{Kind: state.KindEvent,
		Event: &state.EventCommand{Event: stored(e)}}})
	if err != nil {
		return unavailable("commit the %s: %v", what, err)
	}
	if !results[0].OK() {
		s.log.Info("federation: "+what+" refused by room rules", "origin", origin, "event_id", e.EventID,
			"type", e.Type, "code", results[0].Code, "reason", results[0].Message)
		return &Error{Code: results[0].Code, Message: results[0].Message}
	}
	return nil
}

// checkTxnPDU checks one event of an incoming transaction: checkPDU, plus the home org's say
// over state changes. A state event of a room comes only from the room's home org: for a room
// of another org, it must be that org relaying it (not the event's origin sending it peer to
// peer); for a room of this org, it never comes in a transaction at all, since other orgs ask
// with send_state. Other events (messages, redactions) still flow peer to peer. The one own
// event accepted is a state change this org asked for, returned by the home org's relay (the
// answer to send_state may have been lost).
func (s *Service) checkTxnPDU(txOrigin string, e *event.Event) error {
	if e.Origin == s.opts.Org {
		return s.checkReturned(txOrigin, e)
	}
	if isStateEvent(e) && roomOrg(e.RoomID) != txOrigin {
		return fmt.Errorf("%w: a state event of a room of %s, sent by %s: state changes come from the room's home org",
			errDrop, roomOrg(e.RoomID), txOrigin)
	}
	return s.checkPDU(txOrigin, e)
}

// checkReturned checks an event of this org that a room's home org relayed back.
func (s *Service) checkReturned(txOrigin string, e *event.Event) error {
	if _, known := s.opts.Cluster.Store().Event(e.EventID); known {
		return nil // the usual case: committed when the home org answered; skipped as a duplicate
	}
	if !isStateEvent(e) || roomOrg(e.RoomID) != txOrigin {
		return fmt.Errorf("%w: our own event", errDrop)
	}
	if err := s.verifyOwn(e); err != nil {
		return err
	}
	store := s.opts.Cluster.Store()
	room, ok := store.Room(e.RoomID)
	if !ok || !room.Federate {
		return fmt.Errorf("room %s is not a federated room known here", e.RoomID)
	}
	// Never committed here (its answer was lost), it may come after the home org changed that
	// state again, and this org has the change already, or the room as the home org holds it
	// now (a lost join's recovery): applied, the older event would undo it here only.
	if cur, ok := store.StateEventID(e.RoomID, e.Type, *e.StateKey); ok {
		if ce, ok := store.Event(cur); ok && ce.Depth > e.Depth {
			return fmt.Errorf("%w: older (depth %d) than the room's current %s state for %q (depth %d)", errDrop, e.Depth, e.Type, *e.StateKey, ce.Depth)
		}
	}
	return checkContent(e)
}

// errOwnKeyNotReady means this org's own events cannot be checked yet: its signing key is not
// in the replicated state yet. Nothing is wrong with the event then.
var errOwnKeyNotReady = errors.New("our signing key is not ready yet")

// verifyOwn checks that e, an event of this org that another org sent back, really is this
// org's: sent by one of its users, with intact hashes and id, signed with its key.
func (s *Service) verifyOwn(e *event.Event) error {
	keys, ok := s.ownKeys()
	if !ok {
		return errOwnKeyNotReady
	}
	if userOrg(e.Sender) != s.opts.Org {
		return fmt.Errorf("sender %s is not of origin %s", e.Sender, e.Origin)
	}
	if err := event.Check(e); err != nil {
		return err
	}
	return verifyEvent(e, s.opts.Org, keys)
}

// returnsToOrigin reports whether this org, as the home of e's room, relays e back to the org
// it came from: a state change that org asked for with send_state, or a join it asked for with
// send_join, in case the answer was lost. A join's origin that lost the answer does not hold the
// room: it fetches the room from this org when the join comes back (recoverJoin, join.go).
func (s *Service) returnsToOrigin(e *event.Event) bool {
	return roomOrg(e.RoomID) == s.opts.Org && isStateEvent(e)
}

// leftToHome reports whether this org leaves relaying e to the home org of e's room: state
// changes of another org's room reach the participating orgs from the home org only.
func (s *Service) leftToHome(e *event.Event) bool {
	return isStateEvent(e) && roomOrg(e.RoomID) != s.opts.Org
}
