package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/node/content"
)

// request holds the parameters of every op; each op reads the ones it defines.
type request struct {
	Op         string          `json:"op"`
	ID         string          `json:"id"`
	Room       string          `json:"room"`
	RoomID     string          `json:"room_id"`
	UserID     string          `json:"user_id"`
	EventID    string          `json:"event_id"`
	TxnID      string          `json:"txn_id"`
	Type       string          `json:"type"`
	Content    json.RawMessage `json:"content"`
	Reason     *string         `json:"reason"`
	Name       *string         `json:"name"`
	Topic      *string         `json:"topic"`
	Alias      string          `json:"alias"`
	Visibility string          `json:"visibility"`
	Federate   *bool           `json:"federate"`
	Invite     []string        `json:"invite"`
	Typing     *bool           `json:"typing"`
	TimeoutMS  *int64          `json:"timeout_ms"`
	Before     string          `json:"before"`
	Since      string          `json:"since"`
	Limit      *int            `json:"limit"`
}

// opError is a refusal with its protocol code.
type opError struct {
	code, msg string
	extra     map[string]any
}

func (e *opError) Error() string { return e.code + ": " + e.msg }

func refuse(code, format string, args ...any) *opError {
	return &opError{code: code, msg: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *opError {
	return refuse("M_INVALID_PARAM", format, args...)
}

type opFunc func(s *session, r *request) (map[string]any, *opError)

// writeOps are rate limited per user.
// typing is one too: each call, even one that changes nothing here, goes to every other node
// of the org and, in a federated room, as a signed EDU to every org in the room, and each change
// is pushed to every member, so an unlimited client could flood them all.
var writeOps = map[string]bool{"create_room": true, "join": true, "leave": true, "invite": true, "kick": true,
	"ban": true, "unban": true, "send": true, "set_state": true, "redact": true, "read": true, "typing": true}

var ops map[string]opFunc

func init() {
	ops = map[string]opFunc{
		"auth":        opAuthAgain,
		"ping":        func(*session, *request) (map[string]any, *opError) { return nil, nil },
		"create_room": opCreateRoom,
		"join":        opJoin,
		"leave":       opLeave,
		"invite":      opInvite,
		"kick":        func(s *session, r *request) (map[string]any, *opError) { return opModerate(s, r, state.Leave) },
		"ban":         func(s *session, r *request) (map[string]any, *opError) { return opModerate(s, r, state.Ban) },
		"unban":       opUnban,
		"send":        opSend,
		"set_state":   opSetState,
		"redact":      opRedact,
		"typing":      opTyping,
		"read":        opRead,
		"history":     opHistory,
		"rooms":       opRooms,
		"members":     opMembers,
	}
}

// decodeRequest parses one client frame. On failure it returns the id (when one could be
// read) and the protocol error to answer with; the connection stays open either way.
func decodeRequest(data []byte) (*request, string, *opError) {
	// A well-formed frame is decoded once: by hand when it is plain, else by encoding/json.
	// Any other (bad JSON, a field of the wrong type, no op) is read again for its id and the
	// right refusal.
	r, ok := decodePlainRequest(data)
	if !ok {
		r = &request{}
		if err := json.Unmarshal(data, r); err != nil || r.Op == "" {
			return decodeRefusedRequest(data)
		}
	}
	if r.Op != "sync" && ops[r.Op] == nil {
		return nil, r.ID, invalid("unknown op %q", r.Op)
	}
	return r, r.ID, nil
}

// decodeRefusedRequest finds what is wrong with a frame decodeRequest could not take at once:
// not a JSON object with a string op (M_BAD_JSON), or a field of the wrong type. Its id is
// read on its own, so the refusal still carries it.
func decodeRefusedRequest(data []byte) (*request, string, *opError) {
	var head struct {
		Op json.RawMessage `json:"op"`
		ID json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(data, &head); err != nil || len(head.Op) == 0 || head.Op[0] != '"' {
		return nil, stringID(head.ID), refuse("M_BAD_JSON", "a frame is a JSON object with a string op")
	}
	id := stringID(head.ID)
	var r request
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, id, invalid("bad parameter: %s", describeJSONError(err))
	}
	if r.Op != "sync" && ops[r.Op] == nil {
		return nil, id, invalid("unknown op %q", r.Op)
	}
	return &r, id, nil
}

// handle decodes one frame and answers it with exactly one ok or error.
func (s *session) handle(data []byte) {
	if !LosslessJSON(data) {
		// Not UTF-8 (no JSON, nor a valid text frame), or a lone surrogate escaped: encoding/json
		// would read either as U+FFFD, so that txn_ids differing only there would be one, and
		// the second send answered with the first's event, its message dropped.
		s.replyError(frameID(data), "M_BAD_JSON", "a frame is JSON in UTF-8, without lone surrogates (\\ud800 alone)", nil)
		return
	}
	r, id, derr := decodeRequest(data)
	if derr != nil {
		s.replyError(id, derr.code, derr.msg, nil)
		return
	}
	if writeOps[r.Op] {
		if wait, ok := s.srv.allowWrite(s.user); !ok {
			s.srv.metrics.rateLimited.WithLabelValues("send").Inc()
			s.replyError(id, "M_LIMIT_EXCEEDED", "too many requests", map[string]any{"retry_after_ms": max(wait.Milliseconds(), 1)})
			return
		}
	}
	if hourly := s.srv.hourlyLimit(r.Op); hourly != nil {
		if wait, ok := hourly.allow(s.user); !ok {
			s.srv.metrics.rateLimited.WithLabelValues(r.Op).Inc()
			s.replyError(id, "M_LIMIT_EXCEEDED", "too many "+r.Op+" requests this hour", map[string]any{"retry_after_ms": max(wait.Milliseconds(), 1)})
			return
		}
	}
	if r.Op == "send" {
		s.queueSend(id, r) // pipelined, in order (pipeline.go)
		return
	}
	s.awaitSends() // every other request sees the sends before it answered
	if r.Op == "sync" {
		s.sync(r) // answers under the session lock, see sync
		return
	}
	result, oerr := ops[r.Op](s, r)
	if oerr != nil {
		if oerr.code == "M_UNKNOWN" || oerr.code == "M_UNAVAILABLE" {
			s.log.Warn("op failed", "op", r.Op, "user", s.user, "code", oerr.code, "err", oerr.msg)
		}
		s.replyError(id, oerr.code, oerr.msg, oerr.extra)
		return
	}
	s.reply(okFrame(id, result))
}

// hourlyLimit is the per-user hourly limit of an op, if it has one.
func (srv *Server) hourlyLimit(op string) *keyedLimiter {
	switch op {
	case "create_room":
		return srv.roomsUser
	case "join":
		return srv.joinsUser
	}
	return nil
}

// frameID is the id of a frame refused before it is decoded, when it has a string one.
func frameID(data []byte) string {
	var head struct {
		ID json.RawMessage `json:"id"`
	}
	_ = json.Unmarshal(data, &head)
	return stringID(head.ID)
}

func stringID(raw json.RawMessage) string {
	var id string
	if json.Unmarshal(raw, &id) != nil {
		return ""
	}
	return id
}

func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("%s must be %s", te.Field, te.Type)
	}
	return "invalid JSON"
}

func opAuthAgain(s *session, r *request) (map[string]any, *opError) {
	return nil, refuse("M_INVALID_PARAM", "already authenticated")
}

// commit proposes a command and maps the outcome to the protocol.
func (s *session) commit(cmd *state.Command) (state.Result, *opError) {
	return s.srv.commit(cmd)
}

func (srv *Server) commit(cmd *state.Command) (state.Result, *opError) {
	ctx, cancel := context.WithTimeout(context.Background(), srv.opts.WriteTimeout)
	defer cancel()
	res, err := srv.cluster.Propose(ctx, cmd)
	if err != nil {
		if errors.Is(err, consensus.ErrUnavailable) {
			return res, refuse("M_UNAVAILABLE", "the cluster has no reachable leader; retry with the same txn_id")
		}
		return res, refuse("M_UNKNOWN", "commit failed: %v", err)
	}
	if !res.OK() {
		return res, refuse(res.Code, "%s", res.Message)
	}
	return res, nil
}

// newEvent builds and seals an event of roomID on top of the room's latest event, as this
// node knows it. Everything that varies (clock, hashes) is fixed here, before the log.
func (srv *Server) newEvent(room *state.Room, sender, typ string, stateKey *string, body json.RawMessage, redacts string) (*event.Event, *opError) {
	ts := srv.clock.next(sender)
	if srv.stamp != nil {
		ts = srv.stamp(sender)
	}
	e := &event.Event{RoomID: room.RoomID, Sender: sender, Origin: srv.opts.Org, OriginTS: ts,
		Type: typ, StateKey: stateKey, Content: body, Redacts: redacts, PrevEvents: []string{}, Depth: room.Depth + 1}
	if room.LastEventID != "" {
		e.PrevEvents = []string{room.LastEventID}
	}
	// Sealed (content hash and reference-hash id), not signed: the org key signs an event when
	// it leaves the org (federation's outgoingPDU). Ids and hashes do not cover signatures.
	if err := event.Seal(e); err != nil {
		return nil, refuse("M_UNKNOWN", "seal event: %v", err)
	}
	return e, nil
}

// propose seals and commits one event.
func (s *session) propose(room *state.Room, typ string, stateKey *string, body json.RawMessage, redacts, txnID string) (state.Result, *opError) {
	e, oerr := s.srv.newEvent(room, s.user, typ, stateKey, body, redacts)
	if oerr != nil {
		return state.Result{}, oerr
	}
	if stateKey != nil && s.srv.homedElsewhere(room.RoomID) {
		return s.srv.sendRemoteState(e) // the home org decides first (remote_state.go)
	}
	return s.commit(&state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: e, TxnID: txnID}})
}

// room looks up a room by id; ids of other orgs are unreachable until federation.
func (s *session) room(roomID string) (*state.Room, *opError) {
	org, ok := ParseRoomID(roomID)
	if !ok {
		return nil, invalid("room_id is not a room id")
	}
	// A room of this org it does not know may have been created moments ago through another node.
	room, found := settled(s.srv, org == s.srv.opts.Org, func() (*state.Room, bool) { return s.srv.cluster.Store().Room(roomID) })
	if !found {
		if org != s.srv.opts.Org {
			return nil, refuse("M_UNAVAILABLE", "rooms of %s cannot be reached", org)
		}
		return nil, refuse("M_NOT_FOUND", "no such room")
	}
	return room, nil
}

// joinedRoom is room() for ops that need the caller to be joined.
func (s *session) joinedRoom(roomID string) (*state.Room, *opError) {
	room, oerr := s.room(roomID)
	if oerr != nil {
		return nil, oerr
	}
	if s.srv.settledMembership(roomID, s.user, isJoin) != state.Join {
		return nil, refuse("M_FORBIDDEN", "not a member of the room")
	}
	return room, nil
}

// settled is look's answer, looked at again (when mayLag) once this node has applied
// everything committed, if the first answer is not ok: something made through another node
// reaches this one milliseconds after its commit, and a client that saw it committed there must
// not be refused here for it. Only that answer pays the leader round trip; without a leader,
// the first look stands.
func settled[T any](srv *Server, mayLag bool, look func() (T, bool)) (T, bool) {
	v, ok := look()
	if !ok && mayLag && srv.catchUp() {
		v, ok = look()
	}
	return v, ok
}

// settledMembership is user's membership of the room, settled when it is not what the caller
// expects: a join made elsewhere must not be refused here, nor a rejoin after a leave made
// elsewhere be taken for a no-op.
func (srv *Server) settledMembership(roomID, user string, expected func(membership string) bool) string {
	m, _ := settled(srv, true, func() (string, bool) {
		m := srv.cluster.Store().Membership(roomID, user).Membership
		return m, expected(m)
	})
	return m
}

func isJoin(m string) bool { return m == state.Join }

func isNotJoin(m string) bool { return m != state.Join }

func isJoinOrInvite(m string) bool { return m == state.Join || m == state.Invite }

func isBan(m string) bool { return m == state.Ban }

func isInvite(m string) bool { return m == state.Invite }

func memberContent(membership string, reason *string) json.RawMessage {
	m := map[string]string{"membership": membership}
	if reason != nil && *reason != "" {
		m["reason"] = *reason
	}
	b, _ := event.CanonicalValue(m)
	return b
}

func checkReason(reason *string) *opError {
	if reason == nil {
		return nil
	}
	if err := content.CheckText("reason", *reason, content.MaxReasonBytes); err != nil {
		return &opError{code: err.Code, msg: err.Message}
	}
	return nil
}

func opCreateRoom(s *session, r *request) (map[string]any, *opError) {
	vis := r.Visibility
	if vis == "" {
		vis = "private"
	}
	if vis != "public" && vis != "private" {
		return nil, invalid("visibility is public or private")
	}
	federate := true
	if r.Federate != nil {
		federate = *r.Federate
	}
	alias := ""
	if r.Alias != "" {
		if !aliasNameChars.MatchString(r.Alias) {
			return nil, invalid("alias is a localpart of [a-z0-9._-]{1,64}")
		}
		alias = "#" + r.Alias + ":" + s.srv.opts.Org
	}
	if r.Name != nil {
		if err := content.CheckText("name", *r.Name, content.MaxNameBytes); err != nil {
			return nil, &opError{code: err.Code, msg: err.Message}
		}
	}
	if r.Topic != nil {
		if err := content.CheckText("topic", *r.Topic, content.MaxTopicBytes); err != nil {
			return nil, &opError{code: err.Code, msg: err.Message}
		}
	}
	if len(r.Invite) > 100 {
		return nil, invalid("at most 100 invites")
	}
	for _, u := range r.Invite {
		if oerr := s.checkInvitee(u); oerr != nil {
			return nil, oerr
		}
		if oerr := s.srv.checkInviteFederates(u, federate); oerr != nil {
			return nil, oerr
		}
	}
	roomID := newRoomID(s.srv.opts.Org)
	room := &state.Room{RoomID: roomID}
	var events []*event.Event
	add := func(typ string, stateKey string, body any) *opError {
		raw, err := event.CanonicalValue(body)
		if err != nil {
			return refuse("M_UNKNOWN", "encode %s: %v", typ, err)
		}
		sk := stateKey
		e, oerr := s.srv.newEvent(room, s.user, typ, &sk, raw, "")
		if oerr != nil {
			return oerr
		}
		room.LastEventID, room.Depth = e.EventID, e.Depth
		events = append(events, e)
		return nil
	}
	steps := []struct {
		typ, key string
		body     any
		when     bool
	}{
		{"m.room.create", "", state.CreateContent{Creator: s.user, Visibility: vis, Federate: federate, Alias: alias}, true},
		{"m.room.member", s.user, map[string]string{"membership": state.Join}, true},
		{"m.room.power_levels", "", state.DefaultPowerLevels(s.user), true},
		{"m.room.name", "", map[string]string{"name": deref(r.Name)}, r.Name != nil},
		{"m.room.topic", "", map[string]string{"topic": deref(r.Topic)}, r.Topic != nil},
	}
	for _, st := range steps {
		if st.when {
			if oerr := add(st.typ, st.key, st.body); oerr != nil {
				return nil, oerr
			}
		}
	}
	invited := map[string]bool{s.user: true} // the creator is joined; a repeat is one invite
	for _, u := range r.Invite {
		if invited[u] {
			continue
		}
		invited[u] = true
		if oerr := add("m.room.member", u, map[string]string{"membership": state.Invite}); oerr != nil {
			return nil, oerr
		}
	}
	res, oerr := s.commit(&state.Command{Kind: state.KindCreateRoom, CreateRoom: &state.CreateRoom{RoomID: roomID, Alias: alias, Events: events}})
	if oerr != nil {
		return nil, oerr
	}
	return map[string]any{"room_id": res.RoomID}, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func (s *session) checkInvitee(u string) *opError {
	_, org, ok := ParseUserID(u)
	if !ok {
		return invalid("%q is not a user id", u)
	}
	if org != s.srv.opts.Org {
		return s.srv.checkRemoteInvitee(org) // a peer's user: see invite_remote.go
	}
	// Registered moments ago through another node?
	if _, ok := settled(s.srv, true, func() (*state.Account, bool) { return s.srv.cluster.Store().Account(u) }); !ok {
		return refuse("M_NOT_FOUND", "no such user %s", u)
	}
	return nil
}

func opJoin(s *session, r *request) (map[string]any, *opError) {
	roomID := r.Room
	if roomID == "" {
		roomID = r.RoomID
	}
	if home, remote := s.srv.remoteHome(roomID); remote {
		return s.joinRemote(roomID, home)
	}
	if strings.HasPrefix(roomID, "#") {
		_, org, ok := ParseAlias(roomID)
		if !ok {
			return nil, invalid("room is not a room id or alias")
		}
		id, found := settled(s.srv, org == s.srv.opts.Org, func() (string, bool) { return s.srv.cluster.Store().RoomByAlias(roomID) })
		if !found {
			if org != s.srv.opts.Org {
				return nil, refuse("M_UNAVAILABLE", "rooms of %s cannot be reached", org)
			}
			return nil, refuse("M_NOT_FOUND", "no room has the alias %s", roomID)
		}
		roomID = id
	}
	room, oerr := s.room(roomID)
	if oerr != nil {
		return nil, oerr
	}
	if s.srv.settledMembership(roomID, s.user, isNotJoin) == state.Join {
		return map[string]any{"room_id": roomID}, nil
	}
	key := s.user
	if _, oerr := s.propose(room, "m.room.member", &key, memberContent(state.Join, nil), "", ""); oerr != nil {
		return nil, oerr
	}
	return map[string]any{"room_id": roomID}, nil
}

// remoteHome reports the home org of a room id or alias when it is another org's.
func (srv *Server) remoteHome(room string) (string, bool) {
	var org string
	var ok bool
	switch {
	case strings.HasPrefix(room, "#"):
		_, org, ok = ParseAlias(room)
	case strings.HasPrefix(room, "!"):
		org, ok = ParseRoomID(room)
	}
	return org, ok && org != srv.opts.Org
}

// joinRemote joins a room of another org through federation; the home org decides.
func (s *session) joinRemote(room, home string) (map[string]any, *opError) {
	if strings.HasPrefix(room, "!") && s.srv.settledMembership(room, s.user, isNotJoin) == state.Join {
		return map[string]any{"room_id": room}, nil
	}
	if s.srv.remote == nil {
		return nil, refuse("M_UNAVAILABLE", "rooms of %s cannot be reached: federation is not configured", home)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	roomID, err := s.srv.remote.Join(ctx, s.user, room)
	if err != nil {
		return nil, remoteRefusal(home, err)
	}
	return map[string]any{"room_id": roomID}, nil
}

func opLeave(s *session, r *request) (map[string]any, *opError) {
	if res, oerr, done := s.declineRemoteInvite(r.RoomID); done { // invite_remote.go
		return res, oerr
	}
	room, oerr := s.room(r.RoomID)
	if oerr != nil {
		return nil, oerr
	}
	key := s.user
	_, oerr = s.propose(room, "m.room.member", &key, memberContent(state.Leave, nil), "", "")
	return nil, oerr
}

func opInvite(s *session, r *request) (map[string]any, *opError) {
	if oerr := s.checkInvitee(r.UserID); oerr != nil {
		return nil, oerr
	}
	room, oerr := s.room(r.RoomID)
	if oerr != nil {
		return nil, oerr
	}
	if oerr := s.srv.checkInviteFederates(r.UserID, room.Federate); oerr != nil {
		return nil, oerr
	}
	key := r.UserID
	_, oerr = s.propose(room, "m.room.member", &key, memberContent(state.Invite, nil), "", "")
	return nil, oerr
}

// mustBeJoined refuses a caller who is not joined to the room, as the room rules would. kick,
// ban and unban ask it before they look at the target's membership: the other way round, an
// outsider told a private room's members and banned users from everyone else by the refusal.
func (s *session) mustBeJoined(roomID string) *opError {
	if s.srv.settledMembership(roomID, s.user, isJoin) != state.Join {
		return refuse("M_FORBIDDEN", "not a member of the room")
	}
	return nil
}

// opModerate kicks (membership leave) or bans a user.
func opModerate(s *session, r *request, membership string) (map[string]any, *opError) {
	if _, _, ok := ParseUserID(r.UserID); !ok {
		return nil, invalid("user_id is not a user id")
	}
	if oerr := checkReason(r.Reason); oerr != nil {
		return nil, oerr
	}
	room, oerr := s.room(r.RoomID)
	if oerr != nil {
		return nil, oerr
	}
	if membership == state.Leave && r.UserID == s.user {
		return nil, invalid("use leave to leave a room")
	}
	if oerr := s.mustBeJoined(r.RoomID); oerr != nil {
		return nil, oerr
	}
	if membership == state.Leave {
		if m := s.srv.settledMembership(r.RoomID, r.UserID, isJoinOrInvite); m != state.Join && m != state.Invite {
			return nil, refuse("M_FORBIDDEN", "the user is not in the room")
		}
	}
	key := r.UserID
	_, oerr = s.propose(room, "m.room.member", &key, memberContent(membership, r.Reason), "", "")
	return nil, oerr
}

func opUnban(s *session, r *request) (map[string]any, *opError) {
	if _, _, ok := ParseUserID(r.UserID); !ok {
		return nil, invalid("user_id is not a user id")
	}
	// The reason goes into the unban's member event like a kick's: unchecked, a reason over
	// the limit or with a NUL was stored here and relayed, and every other org's inbox, which
	// applies this rule to member events, dropped the unban (the user stayed banned there).
	if oerr := checkReason(r.Reason); oerr != nil {
		return nil, oerr
	}
	room, oerr := s.room(r.RoomID)
	if oerr != nil {
		return nil, oerr
	}
	if oerr := s.mustBeJoined(r.RoomID); oerr != nil {
		return nil, oerr
	}
	if s.srv.settledMembership(r.RoomID, r.UserID, isBan) != state.Ban {
		return nil, refuse("M_FORBIDDEN", "the user is not banned")
	}
	key := r.UserID
	_, oerr = s.propose(room, "m.room.member", &key, memberContent(state.Leave, r.Reason), "", "")
	return nil, oerr
}

func opSend(s *session, r *request) (map[string]any, *opError) {
	cmd, result, oerr := s.prepareSend(r)
	if oerr != nil || cmd == nil {
		return result, oerr
	}
	res, oerr := s.commit(cmd)
	if oerr != nil {
		return nil, oerr
	}
	return map[string]any{"event_id": res.EventID}, nil
}

// prepareSend validates a send and seals its event into a command. A repeat of a committed
// txn_id needs no command: result answers it from the record.
func (s *session) prepareSend(r *request) (cmd *state.Command, result map[string]any, oerr *opError) {
	if r.TxnID == "" || len(r.TxnID) > 255 || content.CheckText("txn_id", r.TxnID, 255) != nil {
		return nil, nil, invalid("txn_id is required (1-255 bytes of UTF-8)")
	}
	typ := r.Type
	if typ == "" {
		typ = "m.room.message"
	}
	if !content.SendableTypes[typ] {
		return nil, nil, invalid("type %q cannot be sent", typ)
	}
	// A repeat of a committed txn_id answers from the record, without a new event.
	if id, ok := s.srv.cluster.Store().TxnEvent(s.user, r.TxnID); ok {
		return nil, map[string]any{"event_id": id}, nil
	}
	body, cerr := content.Message(typ, r.Content)
	if cerr != nil {
		return nil, nil, &opError{code: cerr.Code, msg: cerr.Message}
	}
	room, oerr := s.room(r.RoomID)
	if oerr != nil {
		return nil, nil, oerr
	}
	e, oerr := s.srv.newEvent(room, s.user, typ, nil, body, "")
	if oerr != nil {
		return nil, nil, oerr
	}
	return &state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: e, TxnID: r.TxnID}}, nil, nil
}

func opSetState(s *session, r *request) (map[string]any, *opError) {
	body, cerr := content.State(r.Type, r.Content)
	if cerr != nil {
		return nil, &opError{code: cerr.Code, msg: cerr.Message}
	}
	room, oerr := s.room(r.RoomID)
	if oerr != nil {
		return nil, oerr
	}
	key := ""
	res, oerr := s.propose(room, r.Type, &key, body, "", "")
	if oerr != nil {
		return nil, oerr
	}
	return map[string]any{"event_id": res.EventID}, nil
}

func opRedact(s *session, r *request) (map[string]any, *opError) {
	if !strings.HasPrefix(r.EventID, "$") {
		return nil, invalid("event_id is required")
	}
	if oerr := checkReason(r.Reason); oerr != nil {
		return nil, oerr
	}
	room, oerr := s.room(r.RoomID)
	if oerr != nil {
		return nil, oerr
	}
	body := map[string]string{}
	if r.Reason != nil && *r.Reason != "" {
		body["reason"] = *r.Reason
	}
	raw, _ := event.CanonicalValue(body)
	res, oerr := s.propose(room, "m.room.redaction", nil, raw, r.EventID, "")
	if oerr != nil {
		return nil, oerr
	}
	return map[string]any{"event_id": res.EventID}, nil
}

// maxTypingTimeoutMS caps a typing request's timeout_ms (docs/protocol.md).
const maxTypingTimeoutMS = 120000

func opTyping(s *session, r *request) (map[string]any, *opError) {
	if r.Typing == nil {
		return nil, invalid("typing (bool) is required")
	}
	timeout := 30 * time.Second
	if r.TimeoutMS != nil {
		if *r.TimeoutMS < 1 {
			return nil, invalid("timeout_ms is a positive number of milliseconds")
		}
		// The contract sets no maximum: a longer timeout is taken, and cut to ours (a client
		// that stops typing for good without saying so holds the indicator this long at most).
		timeout = time.Duration(min(*r.TimeoutMS, maxTypingTimeoutMS)) * time.Millisecond
	}
	if _, oerr := s.joinedRoom(r.RoomID); oerr != nil {
		return nil, oerr
	}
	s.srv.hub.setLocalTyping(r.RoomID, s.user, *r.Typing, timeout)
	if s.srv.remote != nil {
		s.srv.remote.SendTyping(r.RoomID, s.user, *r.Typing, timeout)
	}
	return nil, nil
}

func opRead(s *session, r *request) (map[string]any, *opError) {
	if !strings.HasPrefix(r.EventID, "$") {
		return nil, invalid("event_id is required")
	}
	if _, oerr := s.joinedRoom(r.RoomID); oerr != nil {
		return nil, oerr
	}
	_, oerr := s.commit(&state.Command{Kind: state.KindReceipt, Receipt: &state.Receipt{RoomID: r.RoomID, UserID: s.user, EventID: r.EventID}})
	if oerr == nil && s.srv.remote != nil {
		s.srv.remote.SendReceipt(r.RoomID, s.user, r.EventID)
	}
	return nil, oerr
}

// Tokens: "p<pos>" pages back from pos (history), "s<pos>" resumes after pos (sync).
func parseToken(tok string, prefix byte) (int64, bool) {
	if len(tok) < 2 || tok[0] != prefix {
		return 0, false
	}
	n, err := strconv.ParseInt(tok[1:], 10, 64)
	return n, err == nil && n >= 0
}

func opHistory(s *session, r *request) (map[string]any, *opError) {
	limit := 50
	if r.Limit != nil {
		limit = *r.Limit
	}
	if limit < 1 || limit > 100 {
		return nil, invalid("limit is 1-100")
	}
	var before int64
	if r.Before != "" {
		if id, ok := parseBackfillToken(r.Before); ok {
			return s.historyBackfill(r.RoomID, id, limit) // see backfill.go
		}
		var ok bool
		if before, ok = parseToken(r.Before, 'p'); !ok || before == 0 {
			return nil, invalid("before is not a start token")
		}
	}
	if _, oerr := s.joinedRoom(r.RoomID); oerr != nil {
		return nil, oerr
	}
	// A token from a node that is ahead is honoured once this node has applied as far, as in
	// sync: a page read earlier would leave out the events this node lacks below the token,
	// and the client would page on past them.
	if before > 0 && !s.srv.waitStreamPos(before-1, 5*time.Second) {
		return nil, refuse("M_UNAVAILABLE", "this node is catching up; retry")
	}
	events, more, err := s.srv.cluster.Store().History(r.RoomID, before, limit)
	if err != nil {
		return nil, refuse("M_UNKNOWN", "read history: %v", err)
	}
	events, start := s.srv.historyStart(r.RoomID, events, more)
	out := map[string]any{"events": s.visible(events)}
	if start != "" {
		out["start"] = start
	}
	return out, nil
}

// visible strips other users' txn_ids from events read back from the store.
func (s *session) visible(events []*event.Event) []*event.Event {
	for i, e := range events {
		if e.Unsigned != nil && e.Unsigned.TxnID != "" && e.Sender != s.user {
			c := *e
			u := *e.Unsigned
			u.TxnID = ""
			c.Unsigned = &u
			if u.RedactedBecause == nil {
				c.Unsigned = nil
			}
			events[i] = &c
		}
	}
	if events == nil {
		return []*event.Event{}
	}
	return events
}

// sync answers under the session lock: the answer covers everything up to next, and no push
// at or below next is queued after it (pushEvent checks the floor under the same lock).
func (s *session) sync(r *request) {
	var since int64
	if r.Since != "" {
		var ok bool
		if since, ok = parseToken(r.Since, 's'); !ok {
			s.replyError(r.ID, "M_INVALID_PARAM", "since is not a next token", nil)
			return
		}
	}
	// A token from a node that is ahead (or from before this node restarted) is honoured once
	// this node has applied as far; answering earlier would hand out a token that goes back.
	if !s.srv.waitStreamPos(since, 5*time.Second) {
		s.replyError(r.ID, "M_UNAVAILABLE", "this node is catching up; retry", nil)
		return
	}
	defer s.wakeWriter() // after the unlock below: the answer is a reply, not paced
	s.mu.Lock()
	defer s.mu.Unlock()
	gather := s.srv.cluster.Store().Sync // no since: the initial sync
	if r.Since != "" {
		gather = s.srv.cluster.Store().SyncSince // also "s0", from before the org's first event
	}
	res, err := gather(s.user, since, 50)
	if err != nil {
		s.log.Error("sync failed", "user", s.user, "err", err)
		s.srv.metrics.opErrors.WithLabelValues("M_UNKNOWN").Inc()
		s.enqueueLocked(textFrame(errorFrame(r.ID, "M_UNKNOWN", "sync failed", nil)))
		return
	}
	rooms := make(map[string]any, len(res.Rooms))
	for id, room := range res.Rooms {
		events, gap := s.syncGap(id, room.Events)
		m := map[string]any{"state": s.visible(room.State), "events": s.visible(events), "limited": room.Limited || gap != ""}
		if gap != "" {
			m["start"] = gap
		} else if room.Start > 0 {
			m["start"] = "p" + strconv.FormatInt(room.Start, 10)
		}
		rooms[id] = m
	}
	if res.Next > s.floor {
		s.floor = res.Next
	}
	s.enqueueLocked(textFrame(okFrame(r.ID, map[string]any{"rooms": rooms, "next": "s" + strconv.FormatInt(res.Next, 10)})))
}

func opRooms(s *session, r *request) (map[string]any, *opError) {
	rooms, err := s.srv.cluster.Store().UserRooms(s.user)
	if err != nil {
		return nil, refuse("M_UNKNOWN", "list rooms: %v", err)
	}
	return map[string]any{"rooms": rooms}, nil
}

func opMembers(s *session, r *request) (map[string]any, *opError) {
	if _, oerr := s.joinedRoom(r.RoomID); oerr != nil {
		return nil, oerr
	}
	members, err := s.srv.cluster.Store().Members(r.RoomID)
	if err != nil {
		return nil, refuse("M_UNKNOWN", "list members: %v", err)
	}
	out := make([]map[string]any, 0, len(members))
	for _, m := range members {
		row := map[string]any{"user_id": m.UserID, "membership": m.Membership, "power": m.Power}
		if m.Membership == state.Join {
			row["presence"] = s.srv.presenceOf(m.UserID)
		}
		out = append(out, row)
	}
	return map[string]any{"members": out}, nil
}
