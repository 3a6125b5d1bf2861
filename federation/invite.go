package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// Remote invites.
//
// Inviting: a user of this org invites @bob:globex.test into a room of this org. The invite is
// committed here like a local one (the room rules authorize it) and the outbox relays it to
// globex.test, the org of the membership change's target, even though no one of globex is
// joined. globex has no state for the room: its inbox accepts such an invite only from the
// room's home org, verifies it like any event, and commits it as the first event of a partial
// room (state.EventCommand.InviteRoom). bob then sees the invite (pushed, in sync, in rooms).
//
// Accepting: bob joins through make_join/send_join, which the home org allows for invited
// users of private rooms; its answer turns the partial room into a full one.
//
// Declining: bob's leave goes to the home org first (send_leave below, as Matrix does for
// invites of rooms a server is not in): the home org authorizes and commits it, and only then
// is it committed here. The invitee's org cannot relay it the usual way, since it holds none
// of the room's state and state changes of a room are the home org's to order.

// IsPeer reports whether org is a configured federation peer.
func (s *Service) IsPeer(org string) bool {
	_, ok := s.opts.Peers[org]
	return ok
}

// roomInvite reports whether e invites a user of this org into a room this org has not joined
// (unknown here, or known only through earlier invites): the case the inbox handles apart.
func (s *Service) roomInvite(e *event.Event) bool {
	if e.Type != "m.room.member" || e.StateKey == nil || userOrg(*e.StateKey) != s.opts.Org || membershipOf(e) != state.Invite {
		return false
	}
	room, known := s.opts.Cluster.Store().Room(e.RoomID)
	return !known || room.Partial
}

// checkRoomInvite verifies an invite into a room this org has not joined. With no room state
// to check it against, it is taken only on the word of the room's home org (which authorized
// it against the full state): the transaction must come from the home org. Otherwise the
// checks are those of any event (checkPDU), less the room lookup.
func (s *Service) checkRoomInvite(txOrigin string, e *event.Event) error {
	home := roomOrg(e.RoomID)
	if txOrigin != home {
		return fmt.Errorf("an invite into a room this org has not joined comes only from its home org %s, not %s", home, txOrigin)
	}
	if err := s.verifyOrigin(e); err != nil {
		return err
	}
	if err := checkContent(e); err != nil {
		return err
	}
	// The inviting org cannot know our users; an invite for no one is dropped rather than
	// stored as a room nobody can see.
	if _, ok := s.opts.Cluster.Store().Account(*e.StateKey); !ok {
		return fmt.Errorf("no such user %s", *e.StateKey)
	}
	return nil
}

func membershipOf(e *event.Event) string {
	var c struct {
		Membership string `json:"membership"`
	}
	if json.Unmarshal(e.Content, &c) != nil {
		return ""
	}
	return c.Membership
}

type sendLeaveParams struct {
	Event *event.Event `json:"event"`
}

type sendLeaveResult struct {
	EventID string `json:"event_id"`
}

// DeclineInvite sends leave (sealed and signed), a local user's leave event in a room this org
// knows only through their invite, to the room's home org, which authorizes and commits it. The caller commits it
// here once this returns nil. A refusal comes back with the home org's code; no answer in time
// gives M_UNAVAILABLE.
func (s *Service) DeclineInvite(ctx context.Context, leave *event.Event) error {
	home := roomOrg(leave.RoomID)
	if _, ok := s.opts.Peers[home]; !ok {
		return s.notPeer(home)
	}
	out, err := s.outgoingPDU(leave)
	if err != nil {
		return unavailable("%v", err)
	}
	var res sendLeaveResult
	if err := s.call(ctx, home, "send_leave", sendLeaveParams{Event: out}, &res); err != nil {
		return err
	}
	if res.EventID != leave.EventID {
		return unavailable("%s answered send_leave with another event", home)
	}
	s.log.Info("federation: invite declined at the home org", "room_id", leave.RoomID, "user", leave.Sender, "home", home)
	return nil
}

// decodeSendLeave parses send_leave parameters (untrusted input): a user's own leave.
func decodeSendLeave(params []byte) (*event.Event, error) {
	var p sendLeaveParams
	if err := decodeStrict(params, &p); err != nil {
		return nil, fmt.Errorf("bad send_leave params: %w", err)
	}
	e := p.Event
	if e == nil || e.Type != "m.room.member" || e.StateKey == nil || *e.StateKey != e.Sender || membershipOf(e) != state.Leave {
		return nil, errors.New("send_leave needs a user's own leave event")
	}
	return e, nil
}

// sendLeave answers send_leave as the room's home org: the event is checked like any incoming
// event and committed, the room rules deciding (an invitee may always decline).
func (s *Service) sendLeave(ctx context.Context, origin string, e *event.Event) (any, *Error) {
	if rerr := s.commitFromOrg(ctx, origin, e, "leave"); rerr != nil {
		return nil, rerr
	}
	return sendLeaveResult{EventID: e.EventID}, nil
}

// awaitingRoom reports whether e belongs to a room this org cannot apply it to yet: one it does
// not know (most likely being joined right now), or knows only through invites, where nothing
// but membership changes is taken (an event of the room racing this org's join answer).
func (s *Service) awaitingRoom(e *event.Event) bool {
	room, known := s.opts.Cluster.Store().Room(e.RoomID)
	return !known || (room.Partial && e.Type != "m.room.member")
}

// inJoinedRooms leaves out events of rooms known only through invites: this org has none of
// their history, and the home org would not serve get_missing_events for them anyway.
func (s *Service) inJoinedRooms(events []*event.Event) []*event.Event {
	out := events[:0:0]
	for _, e := range events {
		if room, ok := s.opts.Cluster.Store().Room(e.RoomID); ok && !room.Partial {
			out = append(out, e)
		}
	}
	return out
}
