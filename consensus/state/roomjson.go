package state

import (
	"strconv"

	"github.com/parley-chat/parley/consensus/event"
)

// AppendJSON appends r exactly as json.Marshal encodes it (FuzzRoomJSONMatchesMarshal holds the
// two together), without reflection: every batch rewrites the record of each room it touched,
// and encoding/json's reflection was a fifth of the state machine's cost at small batches.
func (r *Room) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"room_id":`...)
	dst = event.AppendMarshalString(dst, r.RoomID)
	dst = append(dst, `,"creator":`...)
	dst = event.AppendMarshalString(dst, r.Creator)
	dst = append(dst, `,"visibility":`...)
	dst = event.AppendMarshalString(dst, r.Visibility)
	dst = append(dst, `,"federate":`...)
	dst = strconv.AppendBool(dst, r.Federate)
	dst = appendOptionalString(dst, `,"alias":`, r.Alias)
	dst = appendOptionalString(dst, `,"name":`, r.Name)
	dst = appendOptionalString(dst, `,"topic":`, r.Topic)
	dst = append(dst, `,"power":`...)
	dst = r.Power.appendJSON(dst)
	dst = append(dst, `,"last_event_id":`...)
	dst = event.AppendMarshalString(dst, r.LastEventID)
	dst = append(dst, `,"depth":`...)
	dst = strconv.AppendInt(dst, r.Depth, 10)
	dst = append(dst, `,"first_pos":`...)
	dst = strconv.AppendInt(dst, r.FirstPos, 10)
	if r.Partial {
		dst = append(dst, `,"partial":true`...)
	}
	return append(dst, '}')
}

func (p *PowerLevels) appendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	if len(p.Users) > 0 {
		dst = append(dst, `"users":`...)
		dst = appendLevels(dst, p.Users)
		dst = append(dst, ',')
	}
	dst = append(dst, `"users_default":`...)
	dst = strconv.AppendInt(dst, p.UsersDefault, 10)
	if len(p.Events) > 0 {
		dst = append(dst, `,"events":`...)
		dst = appendLevels(dst, p.Events)
	}
	for _, f := range []struct {
		name  string
		level int64
	}{
		{`,"events_default":`, p.EventsDefault}, {`,"state_default":`, p.StateDefault}, {`,"ban":`, p.Ban},
		{`,"kick":`, p.Kick}, {`,"redact":`, p.Redact}, {`,"invite":`, p.Invite},
	} {
		dst = append(dst, f.name...)
		dst = strconv.AppendInt(dst, f.level, 10)
	}
	return append(dst, '}')
}

func appendOptionalString(dst []byte, name, s string) []byte {
	if s == "" {
		return dst
	}
	return event.AppendMarshalString(append(dst, name...), s)
}

// appendLevels encodes a map of power levels with its keys sorted, as encoding/json does.
func appendLevels(dst []byte, levels map[string]int64) []byte {
	return event.AppendSortedObject(dst, levels, func(dst []byte, level int64) []byte {
		return strconv.AppendInt(dst, level, 10)
	})
}
