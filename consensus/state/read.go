package state

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/kv"
)

// UserByToken resolves an access token hash to its user.
func (s *Store) UserByToken(tokenHash string) (string, bool) {
	var user string
	_ = s.view(func(tx *kv.Tx) error {
		user = string(tx.Bucket(bucketTokens).Get([]byte(tokenHash)))
		return nil
	})
	return user, user != ""
}

// Account returns a user's account.
func (s *Store) Account(userID string) (*Account, bool) {
	var acc Account
	var ok bool
	_ = s.view(func(tx *kv.Tx) error {
		var err error
		ok, err = getJSON(tx.Bucket(bucketUsers), []byte(userID), &acc)
		return err
	})
	return &acc, ok
}

// Room returns a copy of a room's current summary (sharing the power levels' maps, which
// nobody changes: see PowerLevels).
func (s *Store) Room(roomID string) (*Room, bool) {
	if r, ok := s.rooms.get(roomID); ok {
		return r, true
	}
	return &Room{}, false
}

// RoomByAlias resolves an alias.
func (s *Store) RoomByAlias(alias string) (string, bool) {
	var id string
	_ = s.view(func(tx *kv.Tx) error {
		id = string(tx.Bucket(bucketAliases).Get([]byte(alias)))
		return nil
	})
	return id, id != ""
}

// Membership is a user's membership of a room ("" when none).
func (s *Store) Membership(roomID, userID string) Member {
	var m Member
	_ = s.view(func(tx *kv.Tx) error {
		_, err := getJSON(tx.Bucket(bucketMembers), key2(roomID, userID), &m)
		return err
	})
	return m
}

// StateEventID is the id of the room's current state event of type typ and state key key.
func (s *Store) StateEventID(roomID, typ, key string) (string, bool) {
	var id string
	_ = s.view(func(tx *kv.Tx) error {
		id = string(tx.Bucket(bucketState).Get(key3(roomID, typ, key)))
		return nil
	})
	return id, id != ""
}

// Joined is the room's joined members (immutable; do not modify).
func (s *Store) Joined(roomID string) []string { return s.members.get(roomID) }

// TxnEvent returns the event id a (user, txn_id) produced, if any. It reads the newest
// published state without waiting for the state machine, so it may miss a send committed a
// moment ago: it is the cheap check before proposing, and the state machine checks again.
func (s *Store) TxnEvent(userID, txnID string) (string, bool) {
	var id string
	_ = s.viewPublished(func(tx *kv.Tx) error {
		id = string(tx.Bucket(bucketTxns).Get(key2(userID, txnID)))
		return nil
	})
	return id, id != ""
}

// Event returns a stored event by id.
func (s *Store) Event(eventID string) (*event.Event, bool) {
	var e event.Event
	var ok bool
	_ = s.view(func(tx *kv.Tx) error {
		loc := tx.Bucket(bucketEventIDs).Get([]byte(eventID))
		if loc == nil {
			return nil
		}
		var err error
		ok, err = getJSON(tx.Bucket(bucketEvents), loc, &e)
		return err
	})
	return &e, ok
}

// MemberInfo is one row of a room's member list.
type MemberInfo struct {
	UserID     string `json:"user_id"`
	Membership string `json:"membership"`
	Power      int64  `json:"power"`
}

// Members lists everyone with a membership in the room, sorted by user id.
func (s *Store) Members(roomID string) ([]MemberInfo, error) {
	var out []MemberInfo
	err := s.view(func(tx *kv.Tx) error {
		var room Room
		if _, err := getJSON(tx.Bucket(bucketRooms), []byte(roomID), &room); err != nil {
			return err
		}
		prefix := key2(roomID, "")
		c := tx.Bucket(bucketMembers).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var m Member
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("decode member: %w", err)
			}
			user := string(k[len(prefix):])
			out = append(out, MemberInfo{UserID: user, Membership: m.Membership, Power: room.Power.UserLevel(user)})
		}
		return nil
	})
	return out, err
}

// RoomSummary is one row of a user's room list.
type RoomSummary struct {
	RoomID     string `json:"room_id"`
	Name       string `json:"name"`
	Topic      string `json:"topic"`
	Alias      string `json:"alias"`
	Members    int    `json:"members"`
	Membership string `json:"membership"`
}

// UserRooms lists the rooms a user has joined or is invited to.
func (s *Store) UserRooms(userID string) ([]RoomSummary, error) {
	out := []RoomSummary{}
	err := s.view(func(tx *kv.Tx) error {
		for _, roomID := range userRoomIDs(tx, userID) {
			var m Member
			if _, err := getJSON(tx.Bucket(bucketMembers), key2(roomID, userID), &m); err != nil {
				return err
			}
			if m.Membership != Join && m.Membership != Invite {
				continue
			}
			var room Room
			if _, err := getJSON(tx.Bucket(bucketRooms), []byte(roomID), &room); err != nil {
				return err
			}
			out = append(out, RoomSummary{RoomID: roomID, Name: room.Name, Topic: room.Topic, Alias: room.Alias,
				Members: len(s.members.get(roomID)), Membership: m.Membership})
		}
		return nil
	})
	return out, err
}

func userRoomIDs(tx *kv.Tx, userID string) []string {
	var ids []string
	prefix := key2(userID, "")
	c := tx.Bucket(bucketUserRooms).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		ids = append(ids, string(k[len(prefix):]))
	}
	return ids
}

// History returns up to limit events of a room with stream position below before (0: the
// newest), oldest first, and whether older events remain.
func (s *Store) History(roomID string, before int64, limit int) ([]*event.Event, bool, error) {
	var out []*event.Event
	var more bool
	err := s.view(func(tx *kv.Tx) error {
		var err error
		out, more, err = pageBack(tx, roomID, 0, before, limit)
		return err
	})
	return out, more, err
}

// pageBack reads up to limit events with after < pos < before (before 0: no upper bound),
// newest first from the top, and returns them oldest first; more reports whether events in
// the range were left out.
func pageBack(tx *kv.Tx, roomID string, after, before int64, limit int) ([]*event.Event, bool, error) {
	c := tx.Bucket(bucketEvents).Cursor()
	prefix := key2(roomID, "")
	var k, v []byte
	if before > 0 {
		k, _ = c.Seek(eventKey(roomID, before))
	} else {
		k, _ = c.Seek(eventKey(roomID, 1<<62))
	}
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	var rev []*event.Event
	more := false
	for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, v = c.Prev() {
		pos := posFromEventKey(k)
		if pos <= after {
			break
		}
		if before > 0 && pos >= before {
			continue
		}
		if len(rev) == limit {
			more = true
			break
		}
		var e event.Event
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, false, fmt.Errorf("decode event: %w", err)
		}
		rev = append(rev, &e)
	}
	out := make([]*event.Event, len(rev))
	for i, e := range rev {
		out[len(rev)-1-i] = e
	}
	return out, more, nil
}

// SyncRoom is one room of a sync answer.
type SyncRoom struct {
	State   []*event.Event `json:"state"`
	Events  []*event.Event `json:"events"`
	Limited bool           `json:"limited"`
	// Start is the position of the oldest event returned, when older ones were left out.
	Start int64 `json:"-"`
}

// SyncResult is a sync answer: per room the events after since, and the position it covers.
type SyncResult struct {
	Rooms map[string]*SyncRoom
	Next  int64
}

// Sync gathers, from one consistent view, the events after since (0: initial sync) of every
// room the user has joined or been invited to, or left after since (up to the leaving event).
func (s *Store) Sync(userID string, since int64, perRoom int) (*SyncResult, error) {
	return s.sync(userID, since, since == 0, perRoom)
}

// SyncSince is Sync after a next token, also one of 0: the first sync in an org answers that
// while its stream is empty, and a sync since it gives the events after it like any other
// (the rooms the user left meanwhile too), where an initial sync leaves such rooms out.
func (s *Store) SyncSince(userID string, since int64, perRoom int) (*SyncResult, error) {
	return s.sync(userID, since, false, perRoom)
}

func (s *Store) sync(userID string, since int64, initial bool, perRoom int) (*SyncResult, error) {
	res := &SyncResult{Rooms: map[string]*SyncRoom{}}
	err := s.view(func(tx *kv.Tx) error {
		res.Next = int64(getUint(tx.Bucket(bucketMeta), keyStreamPos))
		for _, roomID := range userRoomIDs(tx, userID) {
			var m Member
			if _, err := getJSON(tx.Bucket(bucketMembers), key2(roomID, userID), &m); err != nil {
				return err
			}
			r, err := syncRoom(tx, roomID, m, since, initial, perRoom)
			if err != nil {
				return err
			}
			if r != nil {
				res.Rooms[roomID] = r
			}
		}
		return nil
	})
	return res, err
}

func syncRoom(tx *kv.Tx, roomID string, m Member, since int64, initial bool, perRoom int) (*SyncRoom, error) {
	switch m.Membership {
	case Join:
		events, more, err := pageBack(tx, roomID, since, 0, perRoom)
		if err != nil {
			return nil, err
		}
		if !initial && len(events) == 0 {
			return nil, nil
		}
		r := &SyncRoom{Events: events, Limited: more}
		if more && len(events) > 0 {
			r.Start = events[0].StreamPos
		}
		// A full state when the client has none for this room: initial sync, or joined since.
		if initial || m.Pos > since {
			if r.State, err = roomState(tx, roomID); err != nil {
				return nil, err
			}
		} else {
			r.State = []*event.Event{}
		}
		return r, nil
	case Invite:
		if !initial && m.Pos <= since {
			return nil, nil
		}
		// An invitee sees the invite and the room's public face, not its history; but one who
		// was joined after since (left, then invited again) first gets what happened up to
		// their leaving, as a user who only left would.
		r, err := untilLeft(tx, roomID, m, since, initial, perRoom)
		if err != nil {
			return nil, err
		}
		invite, err := eventAt(tx, roomID, m.Pos)
		if err != nil {
			return nil, err
		}
		state, err := roomState(tx, roomID)
		if err != nil {
			return nil, err
		}
		var public []*event.Event
		for _, e := range state {
			if e.Type == "m.room.create" || e.Type == "m.room.name" || e.Type == "m.room.topic" {
				public = append(public, e)
			}
		}
		r.State, r.Events = public, append(r.Events, invite)
		return r, nil
	case Leave, Ban:
		if initial || m.Pos <= since {
			return nil, nil
		}
		if m.IsOutsider() {
			// The membership changes of someone never joined or invited (a ban, an unban) are
			// not pushed to them (they would tell them the room exists; see storeClaimed): a
			// sync gives what was pushed, so not here.
			return nil, nil
		}
		if m.Prev == Join {
			m.LeftAt = m.Pos // this change ended the join (also a record from before LeftAt)
		}
		// What happened up to their leaving, if that was after since; then their own latest
		// change, if it came later (a ban after a leave, an unban). One who was never joined
		// after since (an invite declined or withdrawn) learns of their own membership change
		// and nothing else of the room; one banned without ever being in it, of nothing.
		r, err := untilLeft(tx, roomID, m, since, initial, perRoom)
		if err != nil {
			return nil, err
		}
		if m.Pos > m.LeftAt || m.LeftAt <= since {
			own, err := eventAt(tx, roomID, m.Pos)
			if err != nil {
				return nil, err
			}
			r.Events = append(r.Events, own)
		}
		return r, nil
	}
	return nil, nil
}

// untilLeft is the part of a sync since `since` that a user who is no longer joined may
// still read: the room's events up to and including the change that ended their join, when
// that came after since; otherwise, and in an initial sync, which shows no room the
// user left, nothing (an empty room entry to add to).
func untilLeft(tx *kv.Tx, roomID string, m Member, since int64, initial bool, perRoom int) (*SyncRoom, error) {
	r := &SyncRoom{State: []*event.Event{}, Events: []*event.Event{}}
	if initial || m.LeftAt <= since {
		return r, nil
	}
	events, more, err := pageBack(tx, roomID, since, m.LeftAt+1, perRoom)
	if err != nil {
		return nil, err
	}
	r.Events, r.Limited = events, more
	if more && len(events) > 0 {
		r.Start = events[0].StreamPos
	}
	return r, nil
}

func eventAt(tx *kv.Tx, roomID string, pos int64) (*event.Event, error) {
	var e event.Event
	ok, err := getJSON(tx.Bucket(bucketEvents), eventKey(roomID, pos), &e)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("state: no event at %s/%d", roomID, pos)
	}
	return &e, nil
}

// roomState returns the room's current state events in stream order.
func roomState(tx *kv.Tx, roomID string) ([]*event.Event, error) {
	prefix := key2(roomID, "")
	c := tx.Bucket(bucketState).Cursor()
	ids := tx.Bucket(bucketEventIDs)
	events := tx.Bucket(bucketEvents)
	var out []*event.Event
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		loc := ids.Get(v)
		if loc == nil {
			continue
		}
		var e event.Event
		if ok, err := getJSON(events, loc, &e); err != nil {
			return nil, err
		} else if ok {
			out = append(out, &e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StreamPos < out[j].StreamPos })
	return out, nil
}

// RoomState returns a room's current state events.
func (s *Store) RoomState(roomID string) ([]*event.Event, error) {
	var out []*event.Event
	err := s.view(func(tx *kv.Tx) error {
		var err error
		out, err = roomState(tx, roomID)
		return err
	})
	return out, err
}

// SigningKey returns the org's replicated signing key, if one was made.
func (s *Store) SigningKey() (*SigningKey, bool) {
	var k SigningKey
	var ok bool
	_ = s.view(func(tx *kv.Tx) error {
		var err error
		ok, err = getJSON(tx.Bucket(bucketMeta), keySigningKey, &k)
		return err
	})
	return &k, ok
}

// FedCursor is how far the stream was relayed to dest.
func (s *Store) FedCursor(dest string) int64 {
	var pos int64
	_ = s.view(func(tx *kv.Tx) error {
		pos = int64(getUint(tx.Bucket(bucketCursors), []byte(dest)))
		return nil
	})
	return pos
}

// StreamAfter calls fn for each event after pos in stream order, up to limit events, from one
// consistent view. fn returning false stops early.
func (s *Store) StreamAfter(pos int64, limit int, fn func(e *event.Event) bool) error {
	return s.StreamAfterOrgs(pos, limit, func(e *event.Event, _ []string, _ bool) bool { return fn(e) })
}

// StreamAfterOrgs is StreamAfter that also gives, for each event, the orgs with a joined member
// in its room when it was committed (JoinedOrgsAt).
func (s *Store) StreamAfterOrgs(pos int64, limit int, fn func(e *event.Event, orgs []string, recorded bool) bool) error {
	return s.view(func(tx *kv.Tx) error {
		c := tx.Bucket(bucketStream).Cursor()
		events := tx.Bucket(bucketEvents)
		var start [8]byte
		binary.BigEndian.PutUint64(start[:], uint64(pos+1))
		n := 0
		for k, v := c.Seek(start[:]); k != nil && n < limit; k, v = c.Next() {
			roomID, orgs, recorded := parseStreamValue(v)
			var e event.Event
			ok, err := getJSON(events, eventKey(roomID, int64(binary.BigEndian.Uint64(k))), &e)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			n++
			if !fn(&e, orgs, recorded) {
				return nil
			}
		}
		return nil
	})
}

// JoinedOrgsAt lists the orgs (every one, this org too) with a joined member in the room of the
// event at stream position pos when it was committed: the orgs it is relayed to. recorded is
// false when the stream does not say: the room does not federate, or the event was committed by
// a Parley that did not record them.
func (s *Store) JoinedOrgsAt(pos int64) (orgs []string, recorded bool) {
	_ = s.view(func(tx *kv.Tx) error {
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], uint64(pos))
		if v := tx.Bucket(bucketStream).Get(k[:]); v != nil {
			_, orgs, recorded = parseStreamValue(v)
		}
		return nil
	})
	return orgs, recorded
}

// parseStreamValue reads a stream entry: the room id, then for an event of a federating room a
// NUL and the orgs joined when it was committed, NUL-separated (appendJoinedOrgs).
func parseStreamValue(v []byte) (roomID string, orgs []string, recorded bool) {
	i := bytes.IndexByte(v, 0)
	if i < 0 {
		return string(v), nil, false
	}
	if rest := v[i+1:]; len(rest) > 0 {
		orgs = strings.Split(string(rest), "\x00")
	}
	return string(v[:i]), orgs, true
}

// JoinedOrgs lists the orgs (other than self) with a joined member in the room.
func (s *Store) JoinedOrgs(roomID, self string) []string {
	seen := map[string]bool{}
	var out []string
	for _, u := range s.members.get(roomID) {
		i := strings.IndexByte(u, ':')
		if i < 0 {
			continue
		}
		org := u[i+1:]
		if org != self && !seen[org] {
			seen[org] = true
			out = append(out, org)
		}
	}
	sort.Strings(out)
	return out
}

// RecentEvents returns up to limit newest events of a room, oldest first.
func (s *Store) RecentEvents(roomID string, limit int) ([]*event.Event, error) {
	events, _, err := s.History(roomID, 0, limit)
	return events, err
}

// BridgeCursor is how far the stream was published to the org's bridge events exchange.
func (s *Store) BridgeCursor() int64 {
	var pos int64
	_ = s.view(func(tx *kv.Tx) error {
		pos = int64(getUint(tx.Bucket(bucketBridgeCursors), keyBridgeEvents))
		return nil
	})
	return pos
}

// BridgeTxn returns the recorded outcome of a bridge's txn_id, if it was applied (a txn_id
// only claimed is not).
func (s *Store) BridgeTxn(bridge, txnID string) (Result, bool) {
	r, ok := s.bridgeTxn(bridge, txnID)
	if !ok || r.Claim != nil {
		return Result{}, false
	}
	return r.Result, true
}

// BridgeClaim returns the claim of a bridge's txn_id, if it is claimed and not applied yet
// (BridgeClaim).
func (s *Store) BridgeClaim(bridge, txnID string) (ClaimedTxn, bool) {
	r, ok := s.bridgeTxn(bridge, txnID)
	if !ok || r.Claim == nil {
		return ClaimedTxn{}, false
	}
	return *r.Claim, true
}

// bridgeTxn reads the record of a bridge's txn_id: an outcome or a claim.
func (s *Store) bridgeTxn(bridge, txnID string) (bridgeTxn, bool) {
	var r bridgeTxn
	var ok bool
	_ = s.view(func(tx *kv.Tx) error {
		var err error
		ok, err = getJSON(tx.Bucket(bucketBridgeTxns), key2(bridge, txnID), &r)
		return err
	})
	return r, ok
}

// VirtualUser reports whether userID is a virtual user, and the bridge that created it.
func (s *Store) VirtualUser(userID string) (bridge string, ok bool) {
	_ = s.view(func(tx *kv.Tx) error {
		bridge = string(tx.Bucket(bucketBridgeUsers).Get([]byte(userID)))
		return nil
	})
	return bridge, bridge != ""
}
