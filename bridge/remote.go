package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/federation"
)

// Membership of virtual users in rooms of other orgs: the room's home org decides it, so the
// bridge asks it through federation (Options.Remote), as the node does for a client's join
// and leave.

// remoteTimeout bounds one federation request for a command; the home org is waited for up to
// 15 s per request (federation), a join makes two.
const remoteTimeout = 40 * time.Second

// joinRemote has the home org of room (an id or alias) admit user, and returns the room id.
func (s *Service) joinRemote(ctx context.Context, user, room string) (string, *Error, error) {
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	roomID, err := s.opts.Remote.Join(ctx, user, room)
	if err != nil {
		rerr, err := remoteRefusal(err)
		return "", rerr, err
	}
	return roomID, nil, nil
}

// leaveRemote takes user out of room, another org's, through its home org. A leave that
// declines an invite into a room known here only through it is returned for the caller to
// commit (the home org accepted it); any other leave is committed by the federation service,
// once the home org has.
func (s *Service) leaveRemote(ctx context.Context, room *state.Room, user, membership string) (*event.Event, *Error, error) {
	key := user
	body, _ := event.CanonicalValue(map[string]string{"membership": state.Leave})
	leave, err := s.newEvent(room, user, "m.room.member", &key, body)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	if room.Partial && membership == state.Invite {
		if err := s.opts.Remote.DeclineInvite(ctx, leave); err != nil {
			rerr, err := remoteRefusal(err)
			return nil, rerr, err
		}
		return leave, nil, nil
	}
	if err := s.opts.Remote.SendState(ctx, leave); err != nil {
		rerr, err := remoteRefusal(err)
		return nil, rerr, err
	}
	return nil, nil, nil
}

// remoteRefusal sorts a federation error: the home org's refusal refuses the command with its
// code; an org or broker out of reach (M_UNAVAILABLE, or no code) is an error, so the command
// comes again, as one that could not be committed does.
func remoteRefusal(err error) (*Error, error) {
	var fe *federation.Error
	if errors.As(err, &fe) && fe.Code != "M_UNAVAILABLE" {
		return refuse(fe.Code, "%s", fe.Message), nil
	}
	return nil, err
}
