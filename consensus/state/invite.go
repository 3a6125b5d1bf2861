package state

import (
	"encoding/json"
	"strings"

	"github.com/parley-chat/parley/consensus/event"
)

// Remote invites. A user of another org invites a local user into a room this org has never
// joined: the home org authorized the invite and relayed it here, but this org has none of the
// room's state to check it against. The federation inbox verifies the event (hashes, the
// origin's signature, that the room's home org sent it) and commits it with InviteRoom set;
// the room is then stored as Partial: known only through its invite events. The invitee sees
// the invite, can decline it (leave), or join through the home org (make_join/send_join),
// whose answer (a remote_room command) turns the partial room into a full one.

// inviteRoom stores the first invite of a room unknown here as a partial room; event has
// claimed its id.
func (a *applier) inviteRoom(e *event.Event) (Result, error) {
	if e.Type != "m.room.member" || e.StateKey == nil || memberOf(e) != Invite {
		return refuse(CodeInvalid, "only an invite can introduce a room of another org"), nil
	}
	if homeOf(e.RoomID) == "" || e.Sender == *e.StateKey || !checkRoomID(e.RoomID).OK() {
		return refuse(CodeInvalid, "bad remote invite"), nil
	}
	// Federate: an invite came over federation, so the room federates. Visibility, creator and
	// power levels are unknown until a local user joins; nothing reads them meanwhile, since
	// authorizePartial decides everything in a partial room.
	room := &Room{RoomID: e.RoomID, Federate: true, Partial: true, FirstPos: a.pos + 1}
	return a.storeClaimed(room, e, "") // only event claims ids before calling here
}

// authorizePartial decides for a room this org knows only through invites. Without the room's
// state nothing can be checked locally, so only membership changes are taken: those of the
// home org, which authorized them against the full state (another invite, an invite
// withdrawn, a ban), and a local invitee declining their invite.
func (a *applier) authorizePartial(room *Room, e *event.Event) Result {
	if e.Type != "m.room.member" || e.StateKey == nil {
		return refuse(CodeForbidden, "this org has not joined the room")
	}
	membership := memberOf(e)
	switch membership {
	case Invite, Leave, Ban, Join:
	default:
		return refuse(CodeInvalid, "unknown membership %q", membership)
	}
	if e.Origin == homeOf(room.RoomID) {
		return Result{}
	}
	if e.Sender == *e.StateKey && membership == Leave && a.membership(room.RoomID, e.Sender).Membership == Invite {
		return Result{} // declining: the home org records it when the event reaches it
	}
	return refuse(CodeForbidden, "this org has not joined the room")
}

func memberOf(e *event.Event) string {
	var c struct {
		Membership string `json:"membership"`
	}
	if json.Unmarshal(e.Content, &c) != nil {
		return ""
	}
	return c.Membership
}

// homeOf is the org of a room id ("!opaque:org").
func homeOf(roomID string) string {
	if i := strings.IndexByte(roomID, ':'); i >= 0 {
		return roomID[i+1:]
	}
	return ""
}
