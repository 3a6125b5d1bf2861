package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// Error is a refusal with a client protocol code, from this org or relayed from a peer.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func unavailable(format string, args ...any) *Error {
	return &Error{Code: "M_UNAVAILABLE", Message: fmt.Sprintf(format, args...)}
}

// notPeer refuses a request about a room (or user) of org, which is not a federation peer:
// M_FORBIDDEN, as bridges get it, since trying again changes nothing until the configuration
// does (M_UNAVAILABLE would read as "retry").
func (s *Service) notPeer(org string) *Error {
	return &Error{Code: "M_FORBIDDEN", Message: fmt.Sprintf("%s is not a federation peer of %s", org, s.opts.Org)}
}

// requestTTL is how long a request is worth answering: the requester waits 15 s.
const requestTTL = 15 * time.Second

type makeJoinParams struct {
	Room   string `json:"room"` // alias or room id of the home org
	UserID string `json:"user_id"`
}

type makeJoinResult struct {
	RoomID     string   `json:"room_id"`
	PrevEvents []string `json:"prev_events"`
	Depth      int64    `json:"depth"`
}

type sendJoinParams struct {
	Event *event.Event `json:"event"`
}

type sendJoinResult struct {
	RoomID string         `json:"room_id"`
	Alias  string         `json:"alias,omitempty"`
	Events []*event.Event `json:"events"` // state and recent events, in the home org's order
}

// Join makes a local user join a room of another org: make_join and send_join requests to the
// home org, which authorizes the join and answers with the room's state and recent events.
func (s *Service) Join(ctx context.Context, userID, room string) (string, error) {
	home := roomOrg(room)
	if _, ok := s.opts.Peers[home]; !ok {
		return "", s.notPeer(home)
	}
	var tmpl makeJoinResult
	if err := s.call(ctx, home, "make_join", makeJoinParams{Room: room, UserID: userID}, &tmpl); err != nil {
		return "", err
	}
	if roomOrg(tmpl.RoomID) != home {
		return "", unavailable("%s answered with a room of another org", home)
	}
	key := userID
	body, _ := event.CanonicalValue(map[string]string{"membership": state.Join})
	join := &event.Event{RoomID: tmpl.RoomID, Sender: userID, Origin: s.opts.Org, OriginTS: time.Now().UnixMilli(),
		Type: "m.room.member", StateKey: &key, Content: body, PrevEvents: tmpl.PrevEvents, Depth: tmpl.Depth}
	if join.PrevEvents == nil {
		join.PrevEvents = []string{}
	}
	if err := event.Seal(join); err != nil {
		return "", fmt.Errorf("federation: seal join: %w", err)
	}
	if err := s.opts.Keys.Sign(join, s.opts.Org); err != nil {
		return "", unavailable("%v", err)
	}
	switch step, _, err := s.joinThroughHome(ctx, home, join); {
	case err == nil:
	case step == joinUntrusted:
		return "", unavailable("%s sent a room we cannot trust: %v", home, err)
	case step == joinUncommitted:
		return "", unavailable("commit the joined room: %v", err)
	default: // the home org's answer (an *Error, or no answer), or this org's refusal (an *Error)
		return "", err
	}
	s.presenceAfterJoin(userID, tmpl.RoomID) // presence.go
	return tmpl.RoomID, nil
}

// joinStep is where joinThroughHome stopped.
type joinStep int

const (
	joinAsked       joinStep = iota // send_join failed: the home org's *Error, or no answer
	joinUntrusted                   // the answer does not check out
	joinUncommitted                 // committing the room failed (no quorum, a leader change)
	joinRefusedHere                 // this org's state machine refused the room (an *Error)
)

// joinThroughHome sends join, sealed and signed, to its room's home org with send_join and
// commits the room the home org answers with (its state and recent events, checked as any room
// from it): what Join does with the join it made, and recoverJoin with one whose answer was
// lost. On failure it says at which step, with that step's error; it returns how many events
// it committed.
func (s *Service) joinThroughHome(ctx context.Context, home string, join *event.Event) (joinStep, int, error) {
	var res sendJoinResult
	if err := s.call(ctx, home, "send_join", sendJoinParams{Event: wirePDU(join)}, &res); err != nil {
		return joinAsked, 0, err
	}
	if res.RoomID != join.RoomID {
		return joinUntrusted, 0, fmt.Errorf("%s answered with room %s", home, res.RoomID)
	}
	events, err := s.checkRoomEvents(home, join.RoomID, res.Events)
	if err != nil {
		return joinUntrusted, 0, err
	}
	results, err := s.opts.Cluster.ProposeBatch(ctx, []*state.Command{{Kind: state.KindRemoteRoom,
		RemoteRoom: &state.RemoteRoom{RoomID: join.RoomID, Alias: s.answerAlias(home, join.RoomID, res.Alias), Events: events}}})
	if err != nil {
		return joinUncommitted, 0, err
	}
	if !results[0].OK() {
		return joinRefusedHere, 0, &Error{Code: results[0].Code, Message: results[0].Message}
	}
	return 0, len(events), nil
}

// lostJoin reports whether e, in a transaction from txOrigin, is the home org's relay of a join
// of one of this org's users into a room this org does not hold (unknown here, or known only
// through invites): the join was committed at the home org, but its answer never was here (it
// came too late, or this org's leader changed before committing it).
func (s *Service) lostJoin(txOrigin string, e *event.Event) bool {
	if e.Origin != s.opts.Org || roomOrg(e.RoomID) != txOrigin || !isJoin(e) || e.StateKey == nil || *e.StateKey != e.Sender {
		return false
	}
	room, known := s.opts.Cluster.Store().Room(e.RoomID)
	return !known || room.Partial
}

// checkOwnJoin checks that a lost join (lostJoin) really is this org's: signed with its key,
// with intact hashes and id, and content a client could send. The inbox checks it before it
// requeues the transaction or asks the home org for the room: a forged one is dropped at once.
func (s *Service) checkOwnJoin(join *event.Event) error {
	if err := s.verifyOwn(join); err != nil {
		return err
	}
	return checkContent(join)
}

// recoverJoinWait bounds how long recoverJoin waits for the home org's answer.
const recoverJoinWait = 10 * time.Second

// joinRecovery is the outcome of recoverJoin.
type joinRecovery int

const (
	joinRecovered    joinRecovery = iota
	joinUnanswered                // the home org (or the broker) did not answer: may pass
	joinNotCommitted              // the room could not be committed here (no quorum): may pass
	joinRefused                   // refused, or a room that does not verify: would recur
)

// recoverJoin fetches the room of a lost join (lostJoin) from its home org and commits it, as
// Join does with the answer it waited for: so the user ends up joined here too without trying
// again. The home org answers a send_join of a join it has committed with the room as it is
// (sendJoin), committing nothing.
func (s *Service) recoverJoin(ctx context.Context, home string, join *event.Event) (joinRecovery, error) {
	if err := s.checkOwnJoin(join); err != nil {
		return joinRefused, fmt.Errorf("the relayed join: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, recoverJoinWait)
	defer cancel()
	step, n, err := s.joinThroughHome(ctx, home, join)
	switch {
	case err == nil:
	case step == joinAsked:
		var fe *Error
		if !errors.As(err, &fe) || fe.Code == "M_UNAVAILABLE" {
			return joinUnanswered, fmt.Errorf("ask %s for the room: %w", home, err)
		}
		return joinRefused, fmt.Errorf("ask %s for the room: %w", home, err)
	case step == joinUntrusted:
		return joinRefused, fmt.Errorf("%s sent a room we cannot trust: %w", home, err)
	case step == joinUncommitted:
		return joinNotCommitted, fmt.Errorf("commit the joined room: %w", err)
	default:
		return joinRefused, fmt.Errorf("commit the joined room: %w", err)
	}
	s.log.Info("federation: room of a lost join answer fetched from the home org", "room_id", join.RoomID,
		"user", join.Sender, "home", home, "events", n)
	return joinRecovered, nil
}

// answerAlias is the alias a send_join answer gives the room, if it is the home org's own:
// any other would take over an alias of another org here, this org's included (#ops:ORG
// resolving to a peer's room, where a bridge configured with it would then speak).
func (s *Service) answerAlias(home, roomID, alias string) string {
	if alias == "" || aliasOrg(alias) == home {
		return alias
	}
	s.log.Warn("federation: join answer's alias dropped", "room_id", roomID, "home", home, "alias", alias)
	return ""
}

// aliasOrg is the org of an alias (#name:ORG), or "" when it is not one.
func aliasOrg(alias string) string {
	if !strings.HasPrefix(alias, "#") {
		return ""
	}
	return roomOrg(alias)
}

// checkRoomEvents verifies what a home org sent about its room, event by event as a backfill
// answer is (checkBackfill): an event that does not verify, whose origin is neither a peer nor
// this org, or whose sender is not of its origin is dropped and logged, as it would be in a
// transaction, since nothing from an org that is not listed is accepted. The answer must start
// with the room's m.room.create, verified, or the room is refused.
func (s *Service) checkRoomEvents(home, roomID string, events []*event.Event) ([]*event.Event, error) {
	if len(events) == 0 || events[0] == nil || events[0].Type != "m.room.create" {
		return nil, errors.New("the room state does not start with m.room.create")
	}
	out := s.checkBackfill("send_join", home, roomID, "", events)
	if len(out) == 0 || out[0].EventID != events[0].EventID {
		return nil, errors.New("the room's m.room.create does not verify")
	}
	return out, nil
}

// call sends a signed request to dest and waits for its verified response on a temporary
// queue (exclusive, auto-deleted) bound to the federation exchange with key ORG.reply.REQID.
func (s *Service) call(ctx context.Context, dest, op string, params, result any) error {
	peer := s.opts.Peers[dest]
	key, ok := s.opts.Keys.Current()
	if !ok {
		return unavailable("the org signing key is not ready yet")
	}
	raw, err := json.Marshal(params)
	if err != nil {
		return fmt.Errorf("federation: encode %s: %w", op, err)
	}
	req := &Request{Type: TypeRequest, ReqID: randomID(), Origin: s.opts.Org, Destination: dest,
		OriginTS: time.Now().UnixMilli(), Op: op, Params: raw}
	if err := signMessage(req, s.opts.Org, key); err != nil {
		return err
	}
	body, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ch, err := s.conn.Channel(ctx)
	if err != nil {
		return unavailable("broker: %v", err)
	}
	defer ch.Close()
	// Replies come back through the federation exchange, so they cross a shovel between
	// brokers like any transaction; RabbitMQ's direct reply-to would not.
	replyKey := s.opts.Org + ".reply." + req.ReqID
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return unavailable("broker: %v", err)
	}
	if err := ch.QueueBind(q.Name, replyKey, ExchangeFederation, false, nil); err != nil {
		return unavailable("broker: %v", err)
	}
	replies, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		return unavailable("broker: %v", err)
	}
	err = publishConfirmed(ctx, ch, dest, amqp091.Publishing{
		ContentType: "application/json", MessageId: req.ReqID, Type: TypeRequest,
		Expiration: "15000", // after that the requester has given up: never act on it late
		ReplyTo:    replyKey, CorrelationId: req.ReqID, Timestamp: time.Now(), Body: body})
	if err != nil {
		return unavailable("broker: %s: %v", dest, err)
	}
	for {
		select {
		case d, ok := <-replies:
			if !ok {
				return unavailable("the broker channel closed awaiting %s", dest)
			}
			if d.CorrelationId != req.ReqID {
				continue
			}
			resp, err := DecodeResponse(d.Body)
			if err != nil || resp.ReqID != req.ReqID || resp.Origin != dest || resp.Destination != s.opts.Org {
				return unavailable("%s answered with a malformed response", dest)
			}
			if err := verifyMessage(resp, dest, peer); err != nil {
				return unavailable("%s's response: %v", dest, err)
			}
			if resp.Code != "" {
				return &Error{Code: resp.Code, Message: resp.Message}
			}
			if err := json.Unmarshal(resp.Result, result); err != nil {
				return unavailable("%s's %s result: %v", dest, op, err)
			}
			return nil
		case <-ctx.Done():
			return unavailable("%s did not answer %s in time", dest, op)
		}
	}
}

// handleRequest answers a request addressed to this org (as a room's home).
func (s *Service) handleRequest(ctx context.Context, pub *amqp.Publisher, d amqp091.Delivery) {
	req, err := DecodeRequest(d.Body)
	if err != nil {
		s.deadLetter(ctx, pub, d, "M_BAD_JSON", err.Error())
		return
	}
	peer, known := s.opts.Peers[req.Origin]
	switch {
	case !known:
		s.deadLetter(ctx, pub, d, "M_FORBIDDEN", "unknown origin "+req.Origin)
		return
	case req.Destination != s.opts.Org:
		s.deadLetter(ctx, pub, d, "M_FORBIDDEN", "wrong destination "+req.Destination)
		return
	}
	if err := verifyMessage(req, req.Origin, peer); err != nil {
		s.deadLetter(ctx, pub, d, "M_FORBIDDEN", err.Error())
		return
	}
	// Replies go only to the requesting org's reply keys, never into anyone's inbox. A request
	// naming another reply_to is refused before it is acted on: answered, its effect (a
	// send_join's commit) would stand while its answer went nowhere, unlogged.
	if !strings.HasPrefix(d.ReplyTo, req.Origin+".reply.") {
		s.deadLetter(ctx, pub, d, "M_FORBIDDEN", fmt.Sprintf("reply_to %q is not a reply key of %s", d.ReplyTo, req.Origin))
		return
	}
	if age := time.Since(time.UnixMilli(req.OriginTS)); age > requestTTL {
		s.log.Warn("federation: request too old, ignored", "op", req.Op, "from", req.Origin, "age", age)
		_ = d.Ack(false)
		return
	}
	result, rerr := s.answer(ctx, req)
	resp := &Response{Type: TypeResponse, ReqID: req.ReqID, Origin: s.opts.Org, Destination: req.Origin}
	if rerr != nil {
		resp.Code, resp.Message = rerr.Code, rerr.Message
	} else {
		resp.Result, _ = json.Marshal(result)
	}
	key, ok := s.opts.Keys.Current()
	if !ok {
		s.log.Warn("federation: reply not sent", "op", req.Op, "to", req.Origin, "err", "the org signing key is not ready yet")
	} else if err := signMessage(resp, s.opts.Org, key); err != nil {
		s.log.Warn("federation: reply not sent", "op", req.Op, "to", req.Origin, "err", err)
	} else {
		body, _ := json.Marshal(resp)
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := pub.Publish(pctx, ExchangeFederation, d.ReplyTo, false, amqp091.Publishing{ContentType: "application/json",
			CorrelationId: d.CorrelationId, Type: TypeResponse, Body: body})
		cancel()
		if err != nil {
			s.log.Warn("federation: reply not sent", "op", req.Op, "to", req.Origin, "err", err)
		}
	}
	_ = d.Ack(false) // requests are answered at most once; the requester retries on timeout
}

func (s *Service) answer(ctx context.Context, req *Request) (any, *Error) {
	switch req.Op {
	case "make_join":
		var p makeJoinParams
		if err := decodeStrict(req.Params, &p); err != nil {
			return nil, &Error{Code: "M_BAD_JSON", Message: err.Error()}
		}
		return s.makeJoin(req.Origin, p)
	case "send_join":
		var p sendJoinParams
		if err := decodeStrict(req.Params, &p); err != nil || p.Event == nil {
			return nil, &Error{Code: "M_BAD_JSON", Message: "send_join needs an event"}
		}
		return s.sendJoin(ctx, req.Origin, p.Event)
	case "get_missing_events":
		p, err := decodeMissingParams(req.Params)
		if err != nil {
			return nil, &Error{Code: "M_BAD_JSON", Message: err.Error()}
		}
		return s.missingEvents(req.Origin, p)
	case "send_leave":
		e, err := decodeSendLeave(req.Params)
		if err != nil {
			return nil, &Error{Code: "M_BAD_JSON", Message: err.Error()}
		}
		return s.sendLeave(ctx, req.Origin, e) // see invite.go
	case "send_state":
		e, rerr := decodeSendState(req.Params)
		if rerr != nil {
			return nil, rerr
		}
		return s.sendState(ctx, req.Origin, e) // see state.go
	case "backfill":
		p, err := decodeBackfillParams(req.Params)
		if err != nil {
			return nil, &Error{Code: "M_BAD_JSON", Message: err.Error()}
		}
		return s.backfill(req.Origin, p)
	}
	return nil, &Error{Code: "M_INVALID_PARAM", Message: "unknown op " + req.Op}
}

func (s *Service) localRoom(room string) (*state.Room, *Error) {
	store := s.opts.Cluster.Store()
	id := room
	if strings.HasPrefix(room, "#") {
		var ok bool
		if id, ok = store.RoomByAlias(room); !ok {
			return nil, &Error{Code: "M_NOT_FOUND", Message: "no room has the alias " + room}
		}
	}
	if roomOrg(id) != s.opts.Org {
		return nil, &Error{Code: "M_NOT_FOUND", Message: "not a room of " + s.opts.Org}
	}
	r, ok := store.Room(id)
	if !ok {
		return nil, &Error{Code: "M_NOT_FOUND", Message: "no such room"}
	}
	if !r.Federate {
		return nil, &Error{Code: "M_FORBIDDEN", Message: "the room does not federate"}
	}
	return r, nil
}

func (s *Service) makeJoin(origin string, p makeJoinParams) (any, *Error) {
	if userOrg(p.UserID) != origin {
		return nil, &Error{Code: "M_FORBIDDEN", Message: "the user is not of the requesting org"}
	}
	room, e := s.localRoom(p.Room)
	if e != nil {
		return nil, e
	}
	m := s.opts.Cluster.Store().Membership(room.RoomID, p.UserID).Membership
	if m == state.Ban {
		return nil, &Error{Code: "M_FORBIDDEN", Message: "the user is banned from the room"}
	}
	if room.Visibility != "public" && m != state.Invite && m != state.Join {
		return nil, &Error{Code: "M_FORBIDDEN", Message: "the room is private: an invite is needed"}
	}
	return makeJoinResult{RoomID: room.RoomID, PrevEvents: []string{room.LastEventID}, Depth: room.Depth + 1}, nil
}

func (s *Service) sendJoin(ctx context.Context, origin string, join *event.Event) (any, *Error) {
	if join.Type != "m.room.member" || join.StateKey == nil || *join.StateKey != join.Sender || join.Origin != origin {
		return nil, &Error{Code: "M_INVALID_PARAM", Message: "not a join event of the requesting org"}
	}
	if err := s.checkPDU(origin, join); err != nil {
		return nil, &Error{Code: "M_FORBIDDEN", Message: err.Error()}
	}
	room, e := s.localRoom(join.RoomID)
	if e != nil {
		return nil, e
	}
	// A user joined already is answered with the room as it is, their join included: the
	// requester lost the answer to an earlier send_join (a timeout, a leader change) and
	// retries with a new join event, which committed would be a second join of theirs.
	store := s.opts.Cluster.Store()
	_, known := store.Event(join.EventID)
	if !known && store.Membership(room.RoomID, join.Sender).Membership != state.Join {
		results, err := s.opts.Cluster.ProposeBatch(ctx, []*state.Command{{Kind: state.KindEvent,
			Event: &state.EventCommand{Event: stored(join)}}})
		if err != nil {
			return nil, unavailable("commit the join: %v", err)
		}
		if !results[0].OK() {
			return nil, &Error{Code: results[0].Code, Message: results[0].Message}
		}
	}
	return s.roomSnapshot(room)
}

// roomSnapshot is the room's current state plus its recent events, deduplicated, in stream order.
func (s *Service) roomSnapshot(room *state.Room) (*sendJoinResult, *Error) {
	store := s.opts.Cluster.Store()
	st, err := store.RoomState(room.RoomID)
	if err != nil {
		return nil, &Error{Code: "M_UNKNOWN", Message: err.Error()}
	}
	recent, err := store.RecentEvents(room.RoomID, 50)
	if err != nil {
		return nil, &Error{Code: "M_UNKNOWN", Message: err.Error()}
	}
	seen := map[string]bool{}
	var all []*event.Event
	for _, e := range append(st, recent...) {
		if !seen[e.EventID] {
			seen[e.EventID] = true
			all = append(all, e)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].StreamPos < all[j].StreamPos })
	out, rerr := s.outgoingPDUs(all)
	if rerr != nil {
		return nil, rerr
	}
	return &sendJoinResult{RoomID: room.RoomID, Alias: room.Alias, Events: out}, nil
}
