package state

import (
	"bytes"
	"encoding/json"
	"sort"
	"sync"

	"github.com/parley-chat/parley/consensus/kv"
)

// Error codes of the client protocol that the state machine hands back.
const (
	CodeForbidden   = "M_FORBIDDEN"
	CodeNotFound    = "M_NOT_FOUND"
	CodeUserInUse   = "M_USER_IN_USE"
	CodeRoomInUse   = "M_ROOM_IN_USE"
	CodeInvalid     = "M_INVALID_PARAM"
	CodeUnknown     = "M_UNKNOWN"
	CodeUnknownTok  = "M_UNKNOWN_TOKEN"
	CodeUnavailable = "M_UNAVAILABLE"
	// CodeEventExists refuses a new send whose event is already stored: two requests built the
	// same event (siblings of one sender with the same content and millisecond). The node builds
	// it again (node.Server.newEvent); a client never sees this code.
	CodeEventExists = "M_EVENT_EXISTS"
)

// RelayedCode is the code a refusal relayed from another org (federation) carries here: the
// client protocol's codes that can describe a refusal of the request pass; anything else
// becomes M_UNKNOWN. The peer's code is its say, and a token code would tell this org's
// client that its own session ended (the web client logs out on M_UNKNOWN_TOKEN).
func RelayedCode(code string) (string, bool) {
	switch code {
	case CodeForbidden, CodeNotFound, CodeInvalid, CodeUnavailable, CodeRoomInUse,
		"M_BAD_JSON", "M_TOO_LARGE", "M_LIMIT_EXCEEDED", CodeUnknown:
		return code, true
	}
	return CodeUnknown, false
}

// Membership values of m.room.member events.
const (
	Join   = "join"
	Invite = "invite"
	Leave  = "leave"
	Ban    = "ban"
)

// Account is a stored user account.
type Account struct {
	PasswordHash []byte `json:"password_hash"`
	CreatedTS    int64  `json:"created_ts"`
}

// PowerLevels is the content of m.room.power_levels, with Matrix's defaults. Its maps are
// never changed once made: room records share them between copies (Room.clone), and a
// power_levels event replaces them whole.
type PowerLevels struct {
	Users         map[string]int64 `json:"users,omitempty"`
	UsersDefault  int64            `json:"users_default"`
	Events        map[string]int64 `json:"events,omitempty"`
	EventsDefault int64            `json:"events_default"`
	StateDefault  int64            `json:"state_default"`
	Ban           int64            `json:"ban"`
	Kick          int64            `json:"kick"`
	Redact        int64            `json:"redact"`
	Invite        int64            `json:"invite"`
}

// DefaultPowerLevels gives the creator 100 and everyone else Matrix's defaults.
func DefaultPowerLevels(creator string) PowerLevels {
	return PowerLevels{
		Users:        map[string]int64{creator: 100},
		StateDefault: 50, Ban: 50, Kick: 50, Redact: 50,
	}
}

// UserLevel is the power of a user.
func (p PowerLevels) UserLevel(user string) int64 {
	if l, ok := p.Users[user]; ok {
		return l
	}
	return p.UsersDefault
}

// EventLevel is the power needed to send an event of the given type.
func (p PowerLevels) EventLevel(typ string, isState bool) int64 {
	if l, ok := p.Events[typ]; ok {
		return l
	}
	if isState {
		return p.StateDefault
	}
	return p.EventsDefault
}

// CreateContent is the content of m.room.create. Visibility and federation are fixed at creation.
type CreateContent struct {
	Creator    string `json:"creator"`
	Visibility string `json:"visibility"`
	Federate   bool   `json:"federate"`
	Alias      string `json:"alias,omitempty"`
}

// Room is the stored summary of a room's current state.
type Room struct {
	RoomID      string      `json:"room_id"`
	Creator     string      `json:"creator"`
	Visibility  string      `json:"visibility"`
	Federate    bool        `json:"federate"`
	Alias       string      `json:"alias,omitempty"`
	Name        string      `json:"name,omitempty"`
	Topic       string      `json:"topic,omitempty"`
	Power       PowerLevels `json:"power"`
	LastEventID string      `json:"last_event_id"`
	Depth       int64       `json:"depth"`
	FirstPos    int64       `json:"first_pos"`
	// Partial marks a room of another org that this org knows only through an invite of a
	// local user (see invite.go): no state but the invitations, until a local user joins.
	Partial bool `json:"partial,omitempty"`
}

// Member is a user's membership of a room and the stream position where it last changed.
type Member struct {
	Membership string `json:"membership"`
	Pos        int64  `json:"pos"`
	// Prev is the membership before this change: only a user who was joined may read what
	// happened up to their leave or ban.
	Prev string `json:"prev,omitempty"`
	// LeftAt is the position of the change that last ended the user's join (a leave, kick or
	// ban), kept across the changes that follow (a ban after a leave, an unban, an invite): a
	// sync from before it must still give what happened up to it, which Prev alone no longer
	// tells after a second change.
	LeftAt int64 `json:"left_at,omitempty"`
}

// IsOutsider reports whether the record is that of a user who was never joined to the room and
// is not invited, nor was just before this change: a ban of a stranger, their unban, a ban
// again. Such a user must learn nothing of the room, not even that it exists, so none of these
// changes is pushed to them or given in their sync. It is read from the record alone, whose
// fields every version since LeftAt has written alike (no history kept for it), so every node
// reaches the same verdict whether it restored its state from a snapshot or replayed its log. The price: an invitee whose invite
// ended (declined, withdrawn, or a ban) is a stranger again for the changes after that.
func (m Member) IsOutsider() bool {
	return m.Membership != Join && m.Membership != Invite && m.Prev != Join && m.Prev != Invite && m.LeftAt == 0
}

// memberCache keeps each room's joined users in memory so fan-out never scans the database.
// Joined lists are immutable once published: a change builds a new slice.
type memberCache struct {
	mu     sync.RWMutex
	joined map[string][]string // room -> sorted joined user ids (immutable)
}

func newMemberCache() *memberCache {
	return &memberCache{joined: make(map[string][]string)}
}

func (c *memberCache) load(db *kv.DB) error {
	sets := make(map[string][]string)
	err := db.View(func(tx *kv.Tx) error {
		return tx.Bucket(bucketMembers).ForEach(func(k, v []byte) error {
			var m Member
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			if m.Membership != Join {
				return nil
			}
			i := bytes.IndexByte(k, 0)
			if i < 0 {
				return nil
			}
			room := string(k[:i])
			sets[room] = append(sets[room], string(k[i+1:]))
			return nil
		})
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.joined = sets
	c.mu.Unlock()
	return nil
}

func (c *memberCache) get(room string) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.joined[room]
}

func (c *memberCache) set(room, user string, joined bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.joined[room]
	i := sort.SearchStrings(old, user)
	present := i < len(old) && old[i] == user
	switch {
	case joined && !present:
		next := make([]string, 0, len(old)+1)
		next = append(next, old[:i]...)
		next = append(next, user)
		next = append(next, old[i:]...)
		c.joined[room] = next
	case !joined && present:
		next := make([]string, 0, len(old)-1)
		next = append(next, old[:i]...)
		next = append(next, old[i+1:]...)
		c.joined[room] = next
	}
}
