package state

import (
	"encoding/json"
	"maps"
	"slices"

	"github.com/parley-chat/parley/consensus/event"
)

// authorize decides, from the room's state at this point in the log, whether e may be appended.
// It runs inside Apply, so every node reaches the same verdict.
func (a *applier) authorize(room *Room, e *event.Event) Result {
	if room.Partial {
		return a.authorizePartial(room, e)
	}
	level := room.Power.UserLevel(e.Sender)
	switch e.Type {
	case "m.room.create":
		return refuse(CodeForbidden, "the room already exists")
	case "m.room.member":
		if e.StateKey == nil {
			return refuse(CodeInvalid, "member event without state_key")
		}
		return a.authorizeMember(room, e, a.membership(room.RoomID, e.Sender).Membership, level)
	}
	// Every other event needs a joined sender: asked of the joined list in memory rather than
	// by decoding the member record, as this runs for every message.
	if !a.isJoined(room.RoomID, e.Sender) {
		return refuse(CodeForbidden, "not a member of the room")
	}
	if e.Type == "m.room.redaction" {
		loc := a.tx.Bucket(bucketEventIDs).Get([]byte(e.Redacts))
		if loc == nil || indexNUL(loc) < 0 || string(loc[:indexNUL(loc)]) != room.RoomID {
			return refuse(CodeNotFound, "unknown event in this room")
		}
		var target event.Event
		if ok, err := getJSON(a.tx.Bucket(bucketEvents), loc, &target); err != nil || !ok {
			return refuse(CodeNotFound, "unknown event in this room")
		}
		if target.Sender != e.Sender && level < room.Power.Redact {
			return refuse(CodeForbidden, "redacting another user's event needs power %d", room.Power.Redact)
		}
		return Result{}
	}
	isState := e.StateKey != nil
	if need := room.Power.EventLevel(e.Type, isState); level < need {
		return refuse(CodeForbidden, "%s needs power %d", e.Type, need)
	}
	if e.Type == "m.room.power_levels" {
		return authorizePowerChange(room.Power, e, level)
	}
	return Result{}
}

func (a *applier) authorizeMember(room *Room, e *event.Event, sender string, level int64) Result {
	var c struct {
		Membership string `json:"membership"`
	}
	if err := json.Unmarshal(e.Content, &c); err != nil {
		return refuse(CodeInvalid, "bad member content")
	}
	target := *e.StateKey
	current := a.membership(room.RoomID, target).Membership
	targetLevel := room.Power.UserLevel(target)
	switch c.Membership {
	case Join:
		switch {
		case e.Sender != target:
			return refuse(CodeForbidden, "cannot join for another user")
		case current == Ban:
			return refuse(CodeForbidden, "banned from the room")
		case current == Join, current == Invite, room.Visibility == "public":
			return Result{}
		default:
			return refuse(CodeForbidden, "the room is private: an invite is needed")
		}
	case Invite:
		switch {
		case sender != Join:
			return refuse(CodeForbidden, "not a member of the room")
		case level < room.Power.Invite:
			return refuse(CodeForbidden, "inviting needs power %d", room.Power.Invite)
		case current == Join:
			return refuse(CodeForbidden, "already a member")
		case current == Ban:
			return refuse(CodeForbidden, "the user is banned")
		}
		return Result{}
	case Leave:
		if e.Sender == target {
			if current != Join && current != Invite {
				return refuse(CodeForbidden, "not a member of the room")
			}
			return Result{}
		}
		if sender != Join {
			return refuse(CodeForbidden, "not a member of the room")
		}
		switch current {
		case Ban: // unban
			if level < room.Power.Ban {
				return refuse(CodeForbidden, "unbanning needs power %d", room.Power.Ban)
			}
			return Result{}
		case Join, Invite: // kick
			if level < room.Power.Kick || level <= targetLevel {
				return refuse(CodeForbidden, "kicking needs power %d and more than the target's", room.Power.Kick)
			}
			return Result{}
		default:
			return refuse(CodeForbidden, "the user is not in the room")
		}
	case Ban:
		if sender != Join {
			return refuse(CodeForbidden, "not a member of the room")
		}
		if e.Sender == target || level < room.Power.Ban || level <= targetLevel {
			return refuse(CodeForbidden, "banning needs power %d and more than the target's", room.Power.Ban)
		}
		return Result{}
	default:
		return refuse(CodeInvalid, "unknown membership %q", c.Membership)
	}
}

// authorizePowerChange applies Matrix's rules for a power-levels change: a user may not grant
// more power than they hold, change the level of anyone at or above their own, or change any
// threshold (an action's level, an event type's) that is, or would become, above their own:
// else a moderator could lower what they may not reach or raise a level out of everyone's
// reach (power_levels itself at 101 locks the room's admins out of it for good).
func authorizePowerChange(old PowerLevels, e *event.Event, level int64) Result {
	var next PowerLevels
	if err := json.Unmarshal(e.Content, &next); err != nil {
		return refuse(CodeInvalid, "bad power levels")
	}
	// In order, as below: every node words a refusal alike.
	for _, user := range slices.Sorted(maps.Keys(next.Users)) {
		l := next.Users[user]
		prev := old.UserLevel(user)
		if l == prev {
			continue
		}
		if l > level {
			return refuse(CodeForbidden, "cannot grant more power than you have")
		}
		if prev >= level && user != e.Sender {
			return refuse(CodeForbidden, "cannot change the power of %s", user)
		}
	}
	for _, user := range slices.Sorted(maps.Keys(old.Users)) {
		prev := old.Users[user]
		if _, kept := next.Users[user]; !kept && prev >= level && user != e.Sender {
			return refuse(CodeForbidden, "cannot change the power of %s", user)
		}
	}
	thresholds := []struct {
		name      string
		was, will int64
	}{
		{"ban", old.Ban, next.Ban}, {"kick", old.Kick, next.Kick}, {"redact", old.Redact, next.Redact},
		{"invite", old.Invite, next.Invite}, {"state_default", old.StateDefault, next.StateDefault},
		{"events_default", old.EventsDefault, next.EventsDefault}, {"users_default", old.UsersDefault, next.UsersDefault},
	}
	for _, t := range thresholds {
		if t.was != t.will && (t.was > level || t.will > level) {
			return refuse(CodeForbidden, "cannot change %s from %d to %d: above your power %d", t.name, t.was, t.will, level)
		}
	}
	if r := authorizeEventLevels(old.Events, next.Events, level); !r.OK() {
		return r
	}
	return Result{}
}

// authorizeEventLevels checks the change of the per-event-type levels: an entry added, removed
// or changed is refused when its old or its new value is above the sender's power.
func authorizeEventLevels(old, next map[string]int64, level int64) Result {
	for _, typ := range slices.Sorted(maps.Keys(old)) {
		was := old[typ]
		will, kept := next[typ]
		if (!kept || will != was) && was > level {
			return refuse(CodeForbidden, "cannot change the level of %s: %d is above your power %d", typ, was, level)
		}
	}
	for _, typ := range slices.Sorted(maps.Keys(next)) {
		will := next[typ]
		if was, had := old[typ]; (!had || was != will) && will > level {
			return refuse(CodeForbidden, "cannot set the level of %s to %d: above your power %d", typ, will, level)
		}
	}
	return Result{}
}
