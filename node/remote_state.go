package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/federation"
)

// remoteStateTimeout bounds a state change in a room of another org: the federation request
// waits up to 15 s for the home org, then the accepted event is committed here.
const remoteStateTimeout = 20 * time.Second

// homedElsewhere reports whether roomID belongs to another org.
func (srv *Server) homedElsewhere(roomID string) bool {
	org, ok := ParseRoomID(roomID)
	return ok && org != srv.opts.Org
}

// remoteRefusal is the op's error for err, the failure of a request to org: its
// refusal (or this org's federation's, relayedRefusal); anything else is M_UNAVAILABLE.
func remoteRefusal(org string, err error) *opError {
	var fe *federation.Error
	if errors.As(err, &fe) {
		return relayedRefusal(org, fe)
	}
	return refuse("M_UNAVAILABLE", "%v", err)
}

// relayedRefusal is the op's error for a refusal by org: its code if it is one a
// refusal may carry (state.RelayedCode; another becomes M_UNKNOWN, naming it), and its message
// without the code in front that federation.Error's text carries (the client reads the code in
// its own field), or one that says who refused if it sent none.
func relayedRefusal(org string, fe *federation.Error) *opError {
	code, ok := state.RelayedCode(fe.Code)
	msg := fe.Message
	if !ok {
		msg = fmt.Sprintf("refused with code %q: %s", fe.Code, fe.Message)
	}
	if strings.TrimSpace(msg) == "" {
		msg = "refused by " + org
	}
	return refuse(code, "%s", msg)
}

// sendRemoteState hands a local user's state change (leave, kick, ban, unban, invite,
// set_state) in a room of another org to that org: the home org authorizes and orders a
// room's state changes (amqp.md), so nothing is committed here until it has accepted the
// change. Its refusal becomes the op's error with its code; a home org out of reach gives
// M_UNAVAILABLE and leaves nothing committed anywhere.
func (srv *Server) sendRemoteState(e *event.Event) (state.Result, *opError) {
	home, _ := ParseRoomID(e.RoomID)
	if srv.remote == nil {
		return state.Result{}, refuse("M_UNAVAILABLE", "rooms of %s cannot be reached: federation is not configured", home)
	}
	ctx, cancel := context.WithTimeout(context.Background(), remoteStateTimeout)
	defer cancel()
	if err := srv.remote.SendState(ctx, e); err != nil {
		var fe *federation.Error
		if errors.As(err, &fe) {
			return state.Result{}, relayedRefusal(home, fe)
		}
		return state.Result{}, refuse("M_UNAVAILABLE", "state change in a room of %s: %v", home, err)
	}
	return state.Result{EventID: e.EventID, RoomID: e.RoomID}, nil
}
