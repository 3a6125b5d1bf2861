package node

import (
	"context"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// Remote invites (federation/invite.go has the org-to-org side).
//
// A local user may invite a user of another org when that org is a federation peer and the
// room federates. Whether the user exists there cannot be checked from here: the invite is
// committed and relayed anyway, and the peer drops an invite for nobody (the invitee then
// stays "invite" in this org's member list until someone withdraws it with kick).
//
// On the invitee's org the room is partial (known only through the invite) until the user
// joins; a leave there declines the invite, which must reach the home org: see
// declineRemoteInvite.

// remoteInviter is what the federation service offers for remote invites.
type remoteInviter interface {
	IsPeer(org string) bool
	DeclineInvite(ctx context.Context, leave *event.Event) error
}

func (srv *Server) inviter() remoteInviter {
	if srv.remote == nil {
		return nil
	}
	inv, _ := srv.remote.(remoteInviter)
	return inv
}

// checkRemoteInvitee allows inviting users of org only when org is a federation peer. An org
// that is not one is refused for good (M_FORBIDDEN, as a join of its rooms is); without
// federation at all, M_UNAVAILABLE, as every op that needs another org answers then.
func (srv *Server) checkRemoteInvitee(org string) *opError {
	inv := srv.inviter()
	if inv == nil {
		return refuse("M_UNAVAILABLE", "users of %s cannot be reached: federation is not configured", org)
	}
	if !inv.IsPeer(org) {
		return refuse("M_FORBIDDEN", "%s is not a federation peer of %s: its users cannot be invited", org, srv.opts.Org)
	}
	return nil
}

// checkInviteFederates refuses to invite a user of another org into a room that does not
// federate: nothing of such a room ever reaches another org.
func (srv *Server) checkInviteFederates(user string, federate bool) *opError {
	if _, org, ok := ParseUserID(user); ok && org != srv.opts.Org && !federate {
		return refuse("M_FORBIDDEN", "the room does not federate: users of %s cannot be invited", org)
	}
	return nil
}

// declineRemoteInvite answers leave in a room this org knows only through invites (a partial
// room). This org holds none of the room's state, so it cannot decide or relay the leave like
// other changes: the leave event is sent to the room's home org (send_leave), which authorizes
// and commits it, and is committed here only once the home org accepted it. done is false when
// the room is not partial: leave then proceeds as usual.
func (s *session) declineRemoteInvite(roomID string) (result map[string]any, oerr *opError, done bool) {
	store := s.srv.cluster.Store()
	room, ok := store.Room(roomID)
	if !ok || !room.Partial {
		return nil, nil, false
	}
	if s.srv.settledMembership(roomID, s.user, isInvite) != state.Invite {
		return nil, refuse("M_FORBIDDEN", "not a member of the room"), true
	}
	inv := s.srv.inviter()
	if inv == nil {
		return nil, refuse("M_UNAVAILABLE", "the room's home org cannot be reached: federation is not configured"), true
	}
	key := s.user
	leave, oerr := s.srv.newEvent(room, s.user, "m.room.member", &key, memberContent(state.Leave, nil), "")
	if oerr != nil {
		return nil, oerr, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := inv.DeclineInvite(ctx, leave); err != nil {
		home, _ := ParseRoomID(roomID)
		return nil, remoteRefusal(home, err), true
	}
	// The home org committed it (and relays it back, so an event already here is fine).
	_, oerr = s.commit(&state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: leave}})
	return nil, oerr, true
}
