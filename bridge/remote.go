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
func (s *Service) joinRemote(parent context.Context, user, room string) (string, *Error, error) {
	ctx, cancel := context.WithTimeout(parent, remoteTimeout)
	defer cancel()
	roomID, err := s.opts.Remote.Join(ctx, user, room)
	if err != nil {
		rerr, err := remoteRefusal(parent, err)
		return "", rerr, err
	}
	return roomID, nil, nil
}

// leaveRemote takes user out of room, another org's, through its home org. A leave that
// declines an invite into a room known here only through it is returned for the caller to
// commit (the home org accepted it); any other leave is committed by the federation service,
// once the home org has.
func (s *Service) leaveRemote(parent context.Context, room *state.Room, user, membership string) (*event.Event, *Error, error) {
	key := user
	body, _ := event.CanonicalValue(map[string]string{"membership": state.Leave})
	leave, err := s.newEvent(room, user, "m.room.member", &key, body)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(parent, remoteTimeout)
	defer cancel()
	if room.Partial && membership == state.Invite {
		if err := s.opts.Remote.DeclineInvite(ctx, leave); err != nil {
			rerr, err := remoteRefusal(parent, err)
			return nil, rerr, err
		}
		return leave, nil, nil
	}
	if err := s.opts.Remote.SendState(ctx, leave); err != nil {
		rerr, err := remoteRefusal(parent, err)
		return nil, rerr, err
	}
	return nil, nil, nil
}

// remoteRefusal turns a federation error into the command's refusal, with its code: the home
// org's own (M_FORBIDDEN, M_NOT_FOUND, …), or M_UNAVAILABLE for a home org or broker out of
// reach. The latter is not requeued as a failed commit is: each try waits up to 15 s per
// request, and the command queue, which serves every bridge of the org, would wait with it
// through all the queue's deliveries while the org is down. Anything else (no federation
// code), and a request cut short because this node stops leading or shuts down (ctx), comes
// again.
func remoteRefusal(ctx context.Context, err error) (*Error, error) {
	var fe *federation.Error
	if ctx.Err() == nil && errors.As(err, &fe) {
		return refuse(fe.Code, "%s", fe.Message), nil
	}
	return nil, err
}
