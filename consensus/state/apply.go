package state

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/kv"
)

// Delivery is a committed event and the local users who must be pushed it, fixed at the moment
// it was applied (the joined members then, plus the target of a membership change).
type Delivery struct {
	Event *event.Event
	// JSON is Event as stored: e.AppendJSON, with the sender's txn_id under unsigned. Pushes
	// reuse it rather than encoding the event again on every node.
	JSON       []byte
	TxnID      string
	Recipients []string // immutable, shared: never modify
	Target     string   // state_key of a member event, also pushed when not joined
}

// Applied is what one batch of log entries changed that connected clients must hear about.
type Applied struct {
	Events        []Delivery
	Receipts      []ReceiptDelivery
	RevokedTokens []string
	// Restored says the whole state was replaced by a snapshot (the leader's, sent to a node
	// too far behind for its log): the events and logouts in between were never applied one
	// by one here, so nothing of them was pushed. Its other fields are empty.
	Restored bool
	// Replayed says the changes come from log entries this node's log held when it started: its
	// state is rebuilt at every start, so they are applied (and pushed, to whoever is connected)
	// again, but they are no new commits, and metrics of commits leave them out.
	Replayed bool

	changes []memberChange // applied to the shared member cache after commit
}

// ReceiptDelivery is a committed read marker and the members to tell.
type ReceiptDelivery struct {
	Receipt    Receipt
	Recipients []string
}

// Entry is one Raft log entry handed to ApplyEntries.
type Entry struct {
	Index uint64
	Batch *Batch // nil for entries that carry no commands (configuration changes, undecodable data)
}

// ApplyEntries applies consecutive log entries in one database transaction. Entries at or below
// the stored applied index were applied before (Raft replays the log after a restart) and are
// skipped, so applying is exactly once. results[i][j] is the result of entries[i]'s j-th command.
//
// A refused command changes nothing. Most are refused before they write anything; a bridge
// command refused after its earlier events were stored (a join, then a message the room's power
// levels refuse) cannot take them back within the transaction, so it ends the transaction with
// a *refusedLate, which undoes all of it, and the entries are applied again, that command being
// answered with its refusal without being applied. Applying is deterministic, so the commands
// before it have the same outcome the second time, and every node reaches the same state
// however its log entries were grouped into calls.
func (s *Store) ApplyEntries(entries []Entry) ([][]Result, *Applied, error) {
	var refused map[commandAt]Result
	for {
		results, applied, a, err := s.applyEntries(entries, refused)
		if late, ok := errors.AsType[*refusedLate](err); ok {
			if _, again := refused[late.at]; again {
				return nil, nil, fmt.Errorf("state: apply: index %d command %d refused twice", late.at.index, late.at.command)
			}
			if refused == nil {
				refused = map[commandAt]Result{}
			}
			refused[late.at] = late.result
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("state: apply: %w", err)
		}
		for _, m := range applied.pendingMembers() {
			s.members.set(m.room, m.user, m.joined)
		}
		s.rooms.set(a.changedRooms())
		// Recipients were computed inside the transaction from the cache plus pending changes.
		return results, applied, nil
	}
}

// commandAt is a command of the log: its entry's index and its place in the entry.
type commandAt struct {
	index   uint64
	command int
}

// refusedLate is the error that undoes the transaction of a command refused after it wrote
// something (see ApplyEntries); at is filled in by applyEntries.
type refusedLate struct {
	result Result
	at     commandAt
}

func (r *refusedLate) Error() string {
	return fmt.Sprintf("index %d command %d refused after it changed the state: %s", r.at.index, r.at.command, r.result.Message)
}

// applyEntries is one attempt of ApplyEntries: refused are the commands answered with their
// refusal instead of being applied.
func (s *Store) applyEntries(entries []Entry, refused map[commandAt]Result) ([][]Result, *Applied, *applier, error) {
	results := make([][]Result, len(entries))
	applied := &Applied{}
	var a *applier
	err := s.update(func(tx *kv.Tx) error {
		a = &applier{tx: tx, s: s, out: applied, rooms: map[string]*Room{}, dirty: map[string]bool{}}
		meta := tx.Bucket(bucketMeta)
		last := getUint(meta, keyAppliedIndex)
		a.pos = int64(getUint(meta, keyStreamPos))
		for i, e := range entries {
			if e.Index <= last {
				results[i] = make([]Result, commandCount(e.Batch))
				continue
			}
			if e.Batch != nil {
				results[i] = make([]Result, len(e.Batch.Commands))
				for j, cmd := range e.Batch.Commands {
					r, ok := refused[commandAt{e.Index, j}]
					if !ok {
						var err error
						if r, err = a.apply(cmd); err != nil {
							if late, ok := errors.AsType[*refusedLate](err); ok {
								late.at = commandAt{e.Index, j}
								return late
							}
							return fmt.Errorf("index %d command %d: %w", e.Index, j, err)
						}
					}
					r.Index = e.Index
					results[i][j] = r
				}
			}
			last = e.Index
		}
		if err := a.flushRooms(); err != nil {
			return err
		}
		if err := putUint(meta, keyStreamPos, uint64(a.pos)); err != nil {
			return err
		}
		return putUint(meta, keyAppliedIndex, last)
	})
	return results, applied, a, err
}

func commandCount(b *Batch) int {
	if b == nil {
		return 0
	}
	return len(b.Commands)
}

type memberChange struct {
	room, user string
	joined     bool
}

// applier applies commands within one transaction. Membership changes made earlier in the same
// transaction are visible through overlay, since the shared cache is only updated after commit.
type applier struct {
	tx      *kv.Tx
	s       *Store
	out     *Applied
	pos     int64
	overlay map[string][]string
	// rooms holds the room records read or changed in this transaction; the changed ones are
	// written once, at its end, instead of decoded and encoded again for every event.
	rooms      map[string]*Room
	dirty      map[string]bool
	dirtyOrder []string
	scratch    []byte // the event being encoded for the store
	// Keys being built for the store, which copies them: the event's txn key, its id and its
	// key in the events bucket; and its stream entry.
	txnKey, idKey, eventKey, streamVal []byte
	// orgs caches, per federating room, the joined orgs suffix of its stream entries
	// (appendJoinedOrgs) until the room's membership changes in this transaction.
	orgs map[string][]byte
}

func (a *Applied) pendingMembers() []memberChange { return a.changes }

func (a *applier) apply(cmd *Command) (Result, error) {
	if cmd == nil {
		return refuse(CodeInvalid, "empty command"), nil // a null in the entry's list
	}
	switch cmd.Kind {
	case KindRegister:
		if cmd.Register == nil {
			return refuse(CodeInvalid, "empty register"), nil
		}
		return a.register(cmd.Register)
	case KindLogin:
		if cmd.Login == nil {
			return refuse(CodeInvalid, "empty login"), nil
		}
		return a.login(cmd.Login)
	case KindLogout:
		if cmd.Logout == nil {
			return refuse(CodeInvalid, "empty logout"), nil
		}
		return a.logout(cmd.Logout)
	case KindCreateRoom:
		if cmd.CreateRoom == nil {
			return refuse(CodeInvalid, "empty create_room"), nil
		}
		return a.createRoom(cmd.CreateRoom)
	case KindEvent:
		if cmd.Event == nil || cmd.Event.Event == nil {
			return refuse(CodeInvalid, "empty event"), nil
		}
		return a.event(cmd.Event)
	case KindReceipt:
		if cmd.Receipt == nil {
			return refuse(CodeInvalid, "empty receipt"), nil
		}
		return a.receipt(cmd.Receipt)
	case KindSigningKey:
		if cmd.SigningKey == nil {
			return refuse(CodeInvalid, "empty signing key"), nil
		}
		return a.signingKey(cmd.SigningKey)
	case KindFedCursor:
		if cmd.FedCursor == nil {
			return refuse(CodeInvalid, "empty cursor"), nil
		}
		return a.fedCursor(cmd.FedCursor)
	case KindRemoteRoom:
		if cmd.RemoteRoom == nil {
			return refuse(CodeInvalid, "empty remote room"), nil
		}
		return a.remoteRoom(cmd.RemoteRoom)
	case KindBridge:
		if cmd.Bridge == nil {
			return refuse(CodeInvalid, "empty bridge command"), nil
		}
		return a.bridge(cmd.Bridge)
	case KindBridgeCursor:
		if cmd.BridgeCursor == nil {
			return refuse(CodeInvalid, "empty bridge cursor"), nil
		}
		return a.bridgeCursor(cmd.BridgeCursor)
	case KindBridgeClaim:
		if cmd.BridgeClaim == nil {
			return refuse(CodeInvalid, "empty bridge claim"), nil
		}
		return a.bridgeClaim(cmd.BridgeClaim)
	default:
		return refuse(CodeInvalid, "unknown command %q", cmd.Kind), nil
	}
}

func (a *applier) register(c *Register) (Result, error) {
	users := a.tx.Bucket(bucketUsers)
	if users.Get([]byte(c.UserID)) != nil {
		return refuse(CodeUserInUse, "user id already taken"), nil
	}
	if c.UserID == "" || c.TokenHash == "" {
		return refuse(CodeInvalid, "register needs a user id and a token"), nil // see checkIDs
	}
	if err := putJSON(users, []byte(c.UserID), Account{PasswordHash: c.PasswordHash, CreatedTS: c.CreatedTS}); err != nil {
		return Result{}, err
	}
	if err := a.tx.Bucket(bucketTokens).Put([]byte(c.TokenHash), []byte(c.UserID)); err != nil {
		return Result{}, err
	}
	return Result{}, nil
}

func (a *applier) login(c *Login) (Result, error) {
	if a.tx.Bucket(bucketUsers).Get([]byte(c.UserID)) == nil {
		return refuse(CodeForbidden, "unknown user"), nil
	}
	if c.TokenHash == "" {
		return refuse(CodeInvalid, "login needs a token"), nil // see checkIDs
	}
	return Result{}, a.tx.Bucket(bucketTokens).Put([]byte(c.TokenHash), []byte(c.UserID))
}

func (a *applier) logout(c *Logout) (Result, error) {
	tokens := a.tx.Bucket(bucketTokens)
	if tokens.Get([]byte(c.TokenHash)) == nil {
		return refuse(CodeUnknownTok, "unknown token"), nil
	}
	a.out.RevokedTokens = append(a.out.RevokedTokens, c.TokenHash)
	return Result{}, tokens.Delete([]byte(c.TokenHash))
}

func (a *applier) createRoom(c *CreateRoom) (Result, error) {
	if a.roomExists(c.RoomID) {
		return refuse(CodeRoomInUse, "room id already exists"), nil
	}
	if c.Alias != "" && a.tx.Bucket(bucketAliases).Get([]byte(c.Alias)) != nil {
		return refuse(CodeRoomInUse, "alias %s is taken", c.Alias), nil
	}
	if len(c.Events) == 0 || c.Events[0] == nil || c.Events[0].Type != "m.room.create" {
		return refuse(CodeInvalid, "a room starts with m.room.create"), nil
	}
	var cc CreateContent
	if err := json.Unmarshal(c.Events[0].Content, &cc); err != nil {
		return refuse(CodeInvalid, "bad create content"), nil
	}
	if r := checkIDs(c.RoomID, c.Events); !r.OK() {
		return r, nil
	}
	room := &Room{RoomID: c.RoomID, Creator: cc.Creator, Visibility: cc.Visibility, Federate: cc.Federate,
		Alias: c.Alias, Power: DefaultPowerLevels(cc.Creator)}
	if c.Alias != "" {
		if err := a.tx.Bucket(bucketAliases).Put([]byte(c.Alias), []byte(c.RoomID)); err != nil {
			return Result{}, err
		}
	}
	var last Result
	for i, e := range c.Events {
		if i == 0 {
			room.FirstPos = a.pos + 1
		}
		r, err := a.store(room, e, "")
		if err != nil {
			return Result{}, err
		}
		last = r
	}
	return Result{RoomID: c.RoomID, EventID: last.EventID, StreamPos: last.StreamPos}, nil
}

func (a *applier) event(c *EventCommand) (Result, error) {
	e := c.Event
	// The txn id and the event id are claimed up front, each in the one descent that also
	// finds a repeat, and given back if the event is refused: a refused send stores nothing.
	txns := a.tx.Bucket(bucketTxns)
	var txnKey []byte
	if c.TxnID != "" {
		a.txnKey = appendKey2(a.txnKey[:0], e.Sender, c.TxnID)
		txnKey = a.txnKey
		prior, err := txns.Insert(txnKey, []byte(e.EventID))
		if err != nil {
			return Result{}, err
		}
		if prior != nil {
			return a.existing(string(prior))
		}
	}
	ids := a.tx.Bucket(bucketEventIDs)
	if e.EventID == "" {
		return refuse(CodeInvalid, "event without an id"), deleteIf(txns, txnKey) // see checkIDs
	}
	a.idKey = append(a.idKey[:0], e.EventID...)
	a.eventKey = appendEventKey(a.eventKey[:0], e.RoomID, a.pos+1) // the key store gives it
	prior, err := ids.Insert(a.idKey, a.eventKey)
	if err != nil {
		return Result{}, err
	}
	if prior != nil {
		if err := deleteIf(txns, txnKey); err != nil {
			return Result{}, err
		}
		if txnKey != nil {
			// A send whose txn id is new is a new message, even when its event is one already
			// stored (the same sender, content, head and millisecond): answering it with that
			// event would lose it. The sending node builds it again.
			return refuse(CodeEventExists, "event %s is already stored: build the send again", e.EventID), nil
		}
		return a.existing(e.EventID) // the same event again: relayed twice, say
	}
	r, err := a.claimedEvent(c)
	if err != nil || r.OK() {
		return r, err
	}
	if err := deleteIf(txns, txnKey); err != nil {
		return Result{}, err
	}
	return r, ids.Delete(a.idKey)
}

// claimedEvent checks and stores an event whose id (and txn id) event has claimed.
func (a *applier) claimedEvent(c *EventCommand) (Result, error) {
	e := c.Event
	room, err := a.room(e.RoomID)
	if err != nil {
		return Result{}, err
	}
	if room == nil {
		if c.InviteRoom {
			return a.inviteRoom(e)
		}
		return refuse(CodeNotFound, "unknown room"), nil
	}
	if r := a.authorize(room, e); !r.OK() {
		return r, nil
	}
	return a.storeClaimed(room, e, c.TxnID)
}

func deleteIf(b kv.Bucket, key []byte) error {
	if key == nil {
		return nil
	}
	return b.Delete(key)
}

// checkIDs refuses a room's events unless the room id and every event's id are there (they are
// keys: the store refuses an empty one) and every event is of that room. A command's ids were
// checked where it was built, but an entry that failed to apply would stop every node's state
// machine at it, at every restart too: a command that could not be stored is refused instead,
// before anything of it is written.
func checkIDs(roomID string, events []*event.Event) Result {
	if r := checkRoomID(roomID); !r.OK() {
		return r
	}
	for i, e := range events {
		switch {
		case e == nil:
			return refuse(CodeInvalid, "event %d is missing", i)
		case e.RoomID != roomID:
			return refuse(CodeInvalid, "event %d is for room %s", i, e.RoomID)
		case e.EventID == "":
			return refuse(CodeInvalid, "event %d has no id", i)
		}
	}
	return Result{}
}

// checkRoomID refuses a room id that cannot key the state: an empty one, or one holding a NUL.
// Keys join a room id and what follows with a NUL (members, events, state, receipts) and the
// joined lists are loaded from a snapshot by splitting member keys at their first NUL: a
// room id with a NUL in it was read back as another room, with other users, so a node that
// restarted no longer saw the room's members joined and refused what the others stored. Every
// room is made through here (create_room, remote_room, a remote invite), so events can only
// reach rooms whose ids are whole keys. The id grammars (node.ParseRoomID) have no NUL either.
func checkRoomID(roomID string) Result {
	switch {
	case roomID == "":
		return refuse(CodeInvalid, "a room needs an id")
	case strings.IndexByte(roomID, 0) >= 0:
		return refuse(CodeInvalid, "a room id holds no NUL")
	}
	return Result{}
}

// existing answers an idempotent repeat with the first outcome.
func (a *applier) existing(eventID string) (Result, error) {
	loc := a.tx.Bucket(bucketEventIDs).Get([]byte(eventID))
	r := Result{EventID: eventID}
	if loc != nil {
		r.StreamPos = posFromEventKey(loc)
		if i := indexNUL(loc); i >= 0 {
			r.RoomID = string(loc[:i])
		}
	}
	return r, nil
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// room returns the room's record as this transaction left it so far: the applier's own copy,
// which it may change (keepRoom then writes it), or nil when there is no such room.
func (a *applier) room(roomID string) (*Room, error) {
	if r, ok := a.rooms[roomID]; ok {
		return r, nil
	}
	r, ok := a.s.rooms.get(roomID)
	if !ok {
		return nil, nil
	}
	a.rooms[roomID] = r
	return r, nil
}

// roomExists reports whether the room is stored or was created earlier in this transaction.
func (a *applier) roomExists(roomID string) bool {
	r, _ := a.room(roomID)
	return r != nil
}

// keepRoom records that room changed; flushRooms writes its latest record.
func (a *applier) keepRoom(room *Room) {
	a.rooms[room.RoomID] = room
	if !a.dirty[room.RoomID] {
		a.dirty[room.RoomID] = true
		a.dirtyOrder = append(a.dirtyOrder, room.RoomID)
	}
}

// changedRooms are the records flushRooms wrote, for the cache once the transaction commits.
func (a *applier) changedRooms() []*Room {
	out := make([]*Room, len(a.dirtyOrder))
	for i, id := range a.dirtyOrder {
		out[i] = a.rooms[id]
	}
	return out
}

func (a *applier) flushRooms() error {
	rooms := a.tx.Bucket(bucketRooms)
	for _, id := range a.dirtyOrder {
		a.scratch = a.rooms[id].AppendJSON(a.scratch[:0])
		if err := rooms.Put([]byte(id), a.scratch); err != nil {
			return fmt.Errorf("state: store room %s: %w", id, err)
		}
	}
	return nil
}

func (a *applier) membership(roomID, userID string) Member {
	var m Member
	_, _ = getJSON(a.tx.Bucket(bucketMembers), key2(roomID, userID), &m)
	return m
}

// joined is the room's joined members as of this point in the transaction.
func (a *applier) joined(roomID string) []string {
	if l, ok := a.overlay[roomID]; ok {
		return l
	}
	return a.s.members.get(roomID)
}

// isJoined reports whether user is joined to the room as of this point in the transaction.
func (a *applier) isJoined(roomID, user string) bool {
	joined := a.joined(roomID)
	i := sort.SearchStrings(joined, user)
	return i < len(joined) && joined[i] == user
}

// store assigns the next stream position to e and writes it with every index and state change.
func (a *applier) store(room *Room, e *event.Event, txnID string) (Result, error) {
	if err := a.tx.Bucket(bucketEventIDs).Put([]byte(e.EventID), eventKey(e.RoomID, a.pos+1)); err != nil {
		return Result{}, err
	}
	return a.storeClaimed(room, e, txnID)
}

// storeClaimed is store for an event whose id is already in the event-id index, pointing at
// the key store gives it.
func (a *applier) storeClaimed(room *Room, e *event.Event, txnID string) (Result, error) {
	a.pos++
	e.StreamPos = a.pos
	e.Unsigned = nil
	if txnID != "" {
		e.Unsigned = &event.Unsigned{TxnID: txnID}
	}
	// Encoded into the applier's scratch buffer: the store keeps its own copy, which the
	// delivery shares.
	scratch, err := e.AppendJSON(a.scratch[:0])
	if err != nil {
		return Result{}, fmt.Errorf("encode event: %w", err)
	}
	a.scratch = scratch
	a.eventKey = appendEventKey(a.eventKey[:0], e.RoomID, e.StreamPos)
	raw, err := a.tx.Bucket(bucketEvents).PutValue(a.eventKey, scratch)
	if err != nil {
		return Result{}, err
	}
	var posKey [8]byte
	binary.BigEndian.PutUint64(posKey[:], uint64(e.StreamPos))
	a.streamVal = append(a.streamVal[:0], e.RoomID...)
	if room.Federate {
		// Who the event goes to is decided now, by the membership it was committed under, not
		// when the relay reads it: an org whose last member leaves later still gets it.
		a.streamVal = a.appendJoinedOrgs(a.streamVal, e.RoomID)
	}
	if err := a.tx.Bucket(bucketStream).Put(posKey[:], a.streamVal); err != nil {
		return Result{}, err
	}
	room.LastEventID = e.EventID
	if e.Depth > room.Depth {
		room.Depth = e.Depth
	}
	target := ""
	if e.Type == "m.room.create" {
		target = e.Sender // nobody has joined yet: the creator still gets the room's first event
	}
	if e.StateKey != nil {
		if err := a.tx.Bucket(bucketState).Put(key3(e.RoomID, e.Type, *e.StateKey), []byte(e.EventID)); err != nil {
			return Result{}, err
		}
		if err := a.applyState(room, e); err != nil {
			return Result{}, err
		}
		// The member hears of their own membership change, except a stranger to the room (a
		// ban, an unban, a ban again: Member.IsOutsider): pushing it would tell them the room
		// exists, its id and who moderated them. syncRoom leaves it out alike.
		if e.Type == "m.room.member" && !a.membership(e.RoomID, *e.StateKey).IsOutsider() {
			target = *e.StateKey
		}
	}
	if e.Type == "m.room.redaction" && e.Redacts != "" {
		if err := a.redact(e); err != nil {
			return Result{}, err
		}
	}
	a.keepRoom(room)
	a.out.Events = append(a.out.Events, Delivery{Event: e, JSON: raw, TxnID: txnID, Recipients: a.joined(e.RoomID), Target: target})
	return Result{EventID: e.EventID, RoomID: e.RoomID, StreamPos: e.StreamPos}, nil
}

func (a *applier) applyState(room *Room, e *event.Event) error {
	switch e.Type {
	case "m.room.name":
		var c struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(e.Content, &c)
		room.Name = c.Name
	case "m.room.topic":
		var c struct {
			Topic string `json:"topic"`
		}
		_ = json.Unmarshal(e.Content, &c)
		room.Topic = c.Topic
	case "m.room.power_levels":
		var p PowerLevels
		if err := json.Unmarshal(e.Content, &p); err == nil {
			room.Power = p
		}
	case "m.room.member":
		var c struct {
			Membership string `json:"membership"`
		}
		_ = json.Unmarshal(e.Content, &c)
		user := *e.StateKey
		old := a.membership(room.RoomID, user)
		leftAt := old.LeftAt
		if old.Membership == Join && c.Membership != Join {
			leftAt = e.StreamPos
		}
		if err := putJSON(a.tx.Bucket(bucketMembers), key2(room.RoomID, user),
			Member{Membership: c.Membership, Pos: e.StreamPos, Prev: old.Membership, LeftAt: leftAt}); err != nil {
			return err
		}
		if err := a.tx.Bucket(bucketUserRooms).Put(key2(user, room.RoomID), nil); err != nil {
			return err
		}
		if (old.Membership == Join) != (c.Membership == Join) {
			a.setJoined(room.RoomID, user, c.Membership == Join)
		}
	}
	return nil
}

// setJoined records a change of the room's joined list for the rest of the transaction. The
// list stays sorted, like the cache's, so isJoined can search it.
func (a *applier) setJoined(room, user string, joined bool) {
	cur := a.joined(room)
	next := make([]string, 0, len(cur)+1)
	for _, u := range cur {
		if u != user {
			next = append(next, u)
		}
	}
	if joined {
		i := sort.SearchStrings(next, user)
		next = append(next, "")
		copy(next[i+1:], next[i:])
		next[i] = user
	}
	if a.overlay == nil {
		a.overlay = make(map[string][]string)
	}
	a.overlay[room] = next
	delete(a.orgs, room)
	a.out.changes = append(a.out.changes, memberChange{room: room, user: user, joined: joined})
}

// appendJoinedOrgs appends to a stream entry a NUL and the orgs with a joined member of the
// room as of this point in the transaction, in order, NUL-separated (parseStreamValue reads them).
func (a *applier) appendJoinedOrgs(dst []byte, roomID string) []byte {
	suffix, ok := a.orgs[roomID]
	if !ok {
		var orgs []string
		for _, u := range a.joined(roomID) {
			if i := strings.IndexByte(u, ':'); i >= 0 && !slices.Contains(orgs, u[i+1:]) {
				orgs = append(orgs, u[i+1:])
			}
		}
		sort.Strings(orgs)
		suffix = append([]byte{0}, strings.Join(orgs, "\x00")...)
		if a.orgs == nil {
			a.orgs = make(map[string][]byte)
		}
		a.orgs[roomID] = suffix
	}
	return append(dst, suffix...)
}

// redact empties the content of the event a redaction points at, keeping it verifiable.
func (a *applier) redact(r *event.Event) error {
	loc := a.tx.Bucket(bucketEventIDs).Get([]byte(r.Redacts))
	if loc == nil {
		return nil
	}
	events := a.tx.Bucket(bucketEvents)
	var target event.Event
	if ok, err := getJSON(events, loc, &target); err != nil || !ok {
		return err
	}
	red := event.Redact(&target)
	because := r.Clone()
	because.Unsigned = nil
	if red.Unsigned == nil {
		red.Unsigned = &event.Unsigned{}
	}
	red.Unsigned.RedactedBecause = because
	return putJSON(events, append([]byte(nil), loc...), red)
}

func (a *applier) receipt(c *Receipt) (Result, error) {
	if a.membership(c.RoomID, c.UserID).Membership != Join {
		return refuse(CodeForbidden, "not a member of the room"), nil
	}
	loc := a.tx.Bucket(bucketEventIDs).Get([]byte(c.EventID))
	if loc == nil || string(loc[:max(indexNUL(loc), 0)]) != c.RoomID {
		return refuse(CodeNotFound, "unknown event in this room"), nil
	}
	if err := a.tx.Bucket(bucketReceipts).Put(key2(c.RoomID, c.UserID), []byte(c.EventID)); err != nil {
		return Result{}, err
	}
	a.out.Receipts = append(a.out.Receipts, ReceiptDelivery{Receipt: *c, Recipients: a.joined(c.RoomID)})
	return Result{EventID: c.EventID, RoomID: c.RoomID}, nil
}

func (a *applier) signingKey(c *SigningKey) (Result, error) {
	meta := a.tx.Bucket(bucketMeta)
	if meta.Get(keySigningKey) != nil {
		return Result{}, nil // the first key committed stays: later proposals are no-ops
	}
	return Result{}, putJSON(meta, keySigningKey, c)
}

func (a *applier) fedCursor(c *FedCursor) (Result, error) {
	b := a.tx.Bucket(bucketCursors)
	if int64(getUint(b, []byte(c.Destination))) >= c.Pos {
		return Result{}, nil // cursors only move forward
	}
	if c.Destination == "" {
		return refuse(CodeInvalid, "a cursor needs a destination"), nil // see checkIDs
	}
	return Result{}, putUint(b, []byte(c.Destination), uint64(c.Pos))
}

// remoteRoom stores a room first seen through a remote join: its state and recent events,
// in the order given (the home org's order), skipping any already known.
func (a *applier) remoteRoom(c *RemoteRoom) (Result, error) {
	if len(c.Events) == 0 || c.Events[0] == nil || c.Events[0].Type != "m.room.create" {
		return refuse(CodeInvalid, "a room starts with m.room.create"), nil
	}
	if r := checkIDs(c.RoomID, c.Events); !r.OK() {
		return r, nil
	}
	room, err := a.room(c.RoomID)
	if err != nil {
		return Result{}, err
	}
	if room == nil || room.Partial {
		var cc CreateContent
		if err := json.Unmarshal(c.Events[0].Content, &cc); err != nil {
			return refuse(CodeInvalid, "bad create content"), nil
		}
		full := &Room{RoomID: c.RoomID, Creator: cc.Creator, Visibility: cc.Visibility, Federate: cc.Federate,
			Alias: c.Alias, Power: DefaultPowerLevels(cc.Creator), FirstPos: a.pos + 1}
		if room != nil {
			// A room known only through an invite becomes a full one: its invite events stay.
			full.FirstPos, full.LastEventID, full.Depth = room.FirstPos, room.LastEventID, room.Depth
		}
		room = full
		if c.Alias != "" && a.tx.Bucket(bucketAliases).Get([]byte(c.Alias)) == nil {
			if err := a.tx.Bucket(bucketAliases).Put([]byte(c.Alias), []byte(c.RoomID)); err != nil {
				return Result{}, err
			}
		}
	}
	ids := a.tx.Bucket(bucketEventIDs)
	for _, e := range c.Events {
		if ids.Get([]byte(e.EventID)) != nil {
			continue
		}
		if _, err := a.store(room, e, ""); err != nil {
			return Result{}, err
		}
	}
	return Result{RoomID: c.RoomID}, nil
}

// bridge applies a bridge command at most once per (bridge, txn_id); see BridgeCommand (a
// claim of the (bridge, txn_id), BridgeClaim, is no outcome: the command applies over it). A
// refused command changes nothing: it is checked before anything is written, its events are
// applied in order (each refused one stores nothing of itself), an event refused after earlier
// ones were stored undoes the transaction (refusedLate), and the virtual user is created last.
func (a *applier) bridge(c *BridgeCommand) (Result, error) {
	if c.Bridge == "" || c.TxnID == "" || c.UserID == "" {
		return refuse(CodeInvalid, "a bridge command needs bridge, txn_id and user_id"), nil
	}
	txns := a.tx.Bucket(bucketBridgeTxns)
	key := key2(c.Bridge, c.TxnID)
	var prior bridgeTxn
	if ok, err := getJSON(txns, key, &prior); err != nil || (ok && prior.Claim == nil) {
		return prior.Result, err
	}
	for _, e := range c.Events {
		if e == nil || e.Sender != c.UserID {
			return refuse(CodeInvalid, "a bridge command's events are sent by its user"), nil
		}
	}
	create, r := a.virtualUser(c)
	if !r.OK() {
		return r, nil
	}
	var last Result
	for i, e := range c.Events {
		r, err := a.event(&EventCommand{Event: e})
		if err != nil {
			return r, err
		}
		if !r.OK() {
			if i > 0 {
				return Result{}, &refusedLate{result: r}
			}
			return r, nil
		}
		last = r
	}
	if create {
		if err := putJSON(a.tx.Bucket(bucketUsers), []byte(c.UserID), Account{CreatedTS: c.CreatedTS}); err != nil {
			return Result{}, err
		}
		if err := a.tx.Bucket(bucketBridgeUsers).Put([]byte(c.UserID), []byte(c.Bridge)); err != nil {
			return Result{}, err
		}
	}
	return last, putJSON(txns, key, last)
}

// bridgeTxn is a record of bucketBridgeTxns: the outcome of an applied command (a Result, as
// written by BridgeCommand), or, while Claim is set, a claim (BridgeClaim).
type bridgeTxn struct {
	Result
	Claim *ClaimedTxn `json:"claim,omitempty"`
}

// bridgeClaim stores the first claim of a (bridge, txn_id) without a record, or releases one;
// see BridgeClaim.
func (a *applier) bridgeClaim(c *BridgeClaim) (Result, error) {
	if c.Bridge == "" || c.TxnID == "" || c.UserID == "" || c.RoomID == "" || c.Claim == "" {
		return refuse(CodeInvalid, "a bridge claim needs bridge, txn_id, user_id, room_id and claim"), nil
	}
	if c.Event != nil && (c.Event.Sender != c.UserID || c.Event.RoomID != c.RoomID) {
		return refuse(CodeInvalid, "a bridge claim's event is its user's, in its room"), nil
	}
	txns := a.tx.Bucket(bucketBridgeTxns)
	key := key2(c.Bridge, c.TxnID)
	var rec bridgeTxn
	found, err := getJSON(txns, key, &rec)
	if err != nil {
		return Result{}, err
	}
	if c.Release {
		if found && rec.Claim != nil && rec.Claim.Claim == c.Claim {
			return Result{}, txns.Delete(key)
		}
		return Result{}, nil
	}
	if found {
		return Result{}, nil // claimed or applied before: the proposer reads which
	}
	m := a.membership(c.RoomID, c.UserID)
	return Result{}, putJSON(txns, key, bridgeTxn{Claim: &ClaimedTxn{Claim: c.Claim, RoomID: c.RoomID, UserID: c.UserID,
		MemberPos: m.Pos, Event: c.Event}})
}

// virtualUser reports whether c's user is to be created as a virtual user of c's bridge (it
// does not exist yet), or refuses the command when the user is a registered (password)
// account, which is never acted for.
func (a *applier) virtualUser(c *BridgeCommand) (create bool, r Result) {
	if a.tx.Bucket(bucketUsers).Get([]byte(c.UserID)) == nil {
		return true, Result{}
	}
	if a.tx.Bucket(bucketBridgeUsers).Get([]byte(c.UserID)) == nil {
		return false, refuse(CodeForbidden, "%s is a registered account, not a virtual user", c.UserID)
	}
	return false, Result{}
}

func (a *applier) bridgeCursor(c *BridgeCursor) (Result, error) {
	b := a.tx.Bucket(bucketBridgeCursors)
	if int64(getUint(b, keyBridgeEvents)) >= c.Pos {
		return Result{}, nil // cursors only move forward
	}
	return Result{}, putUint(b, keyBridgeEvents, uint64(c.Pos))
}
