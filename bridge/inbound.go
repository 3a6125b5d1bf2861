package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/node"
)

// consume handles the command queue while this node leads (WhileLeading starts it once this
// node has applied everything committed before it led, so the (bridge, txn_id) records it
// reads are current).
func (s *Service) consume(ctx context.Context) {
	pub := amqp.NewPublisher(s.conn) // dead letters
	defer pub.Close()
	// The topology is declared again before every new subscription: the relay does so only
	// when a publish fails, which an idle org never has, and the queue a broker lost would
	// stay gone (commands sent to it dropped) until the node restarted.
	c := amqp.ConsumeRedeclaring(ctx, s.conn, CommandQueue(s.opts.Org), s.opts.Prefetch, s.declare,
		func(ctx context.Context, d amqp091.Delivery) { s.handle(ctx, pub, d) })
	<-ctx.Done()
	c.Close()
}

// handle processes one command: refused ones are dead-lettered with their reason, applied ones
// acked once committed, and those that could not be committed requeued.
func (s *Service) handle(ctx context.Context, pub *amqp.Publisher, d amqp091.Delivery) {
	cmd, b, verr := s.check(d)
	var res state.Result
	if verr == nil {
		var err error
		res, verr, err = s.apply(ctx, cmd, b)
		if err != nil {
			// Not committed, or unknown (no quorum, leadership lost): applying is idempotent
			// by (bridge, txn_id), so the broker may deliver it again. Wait a little first so
			// a short outage does not burn the queue's delivery limit.
			if ctx.Err() == nil {
				s.log.Warn("bridge: command not committed, requeueing", "bridge", cmd.Bridge, "txn_id", cmd.TxnID, "err", err)
				sleep(ctx, time.Second)
			}
			// A reject, which quorum queues count in x-delivery-count (from RabbitMQ 4.3 a nack
			// is not), so a command that never commits still meets the delivery limit and the
			// DLQ; a nack when this node stops leading, which is no fault of the command's.
			requeue := func() error { return d.Reject(true) }
			if ctx.Err() != nil {
				requeue = func() error { return d.Nack(false, true) }
			}
			if nerr := requeue(); nerr != nil {
				s.log.Warn("bridge: requeue failed (the broker redelivers)", "err", nerr)
			}
			return
		}
	}
	if verr != nil {
		s.deadLetter(ctx, pub, d, verr)
		return
	}
	s.log.Debug("bridge: command applied", "bridge", cmd.Bridge, "txn_id", cmd.TxnID, "op", cmd.Op, "event_id", res.EventID)
	if err := d.Ack(false); err != nil {
		s.log.Warn("bridge: ack failed (the broker redelivers; applying is idempotent)", "err", err)
	}
}

func (s *Service) deadLetter(ctx context.Context, pub *amqp.Publisher, d amqp091.Delivery, e *Error) {
	s.log.Warn("bridge: command refused", "message_id", d.MessageId, "user_id", d.UserId, "reason", e.Error())
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := amqp.DeadLetter(dctx, pub, DeadLetterExchange(s.opts.Org), d, e.Error())
	if err == nil && s.opts.OnDeadLetter != nil {
		// Counted once it is in the dead-letter queue: a requeued one comes again.
		s.opts.OnDeadLetter(e.Code)
	}
	if err != nil {
		s.log.Error("bridge: dead-lettering failed; the command was requeued", "err", err)
		// The dead-letter exchange or queue may be gone (an operator, a reset broker): without
		// them again every refusal would be requeued through the delivery limit, and then
		// dead-lettered by the broker to the missing exchange.
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		if derr := s.declare(rctx); derr != nil && ctx.Err() == nil {
			s.log.Warn("bridge: declaring the topology again failed", "err", derr)
		}
		rcancel()
		sleep(ctx, time.Second) // the broker is in trouble: do not spin through the delivery limit
	}
}

// checked is a command that passed every check that needs no commit.
type checked struct {
	*Validated
	bridge *bridgeConf
	roomID string
}

// check validates a delivery in the contract's order: size, user_id, schema, bridge, (a
// repeat of an applied txn_id passes from here), sender namespace, room, content.
func (s *Service) check(d amqp091.Delivery) (*Command, *checked, *Error) {
	if len(d.Body) > MaxCommandBytes {
		return nil, nil, refuse(CodeTooLarge, "command of %d bytes (at most %d)", len(d.Body), MaxCommandBytes)
	}
	if d.UserId == "" {
		return nil, nil, refuse(CodeForbidden, "the command has no user_id property")
	}
	if !s.users[d.UserId] {
		return nil, nil, refuse(CodeForbidden, "user_id %q is no bridge's amqp_user", d.UserId)
	}
	cmd, err := ParseCommand(d.Body)
	if err != nil {
		return nil, nil, err
	}
	b, ok := s.bridges[cmd.Bridge]
	if !ok {
		return cmd, nil, refuse(CodeForbidden, "unknown bridge %q", cmd.Bridge)
	}
	if b.amqpUser != d.UserId {
		return cmd, nil, refuse(CodeForbidden, "user_id %q may not act for bridge %q", d.UserId, b.id)
	}
	// A repeat of an applied (bridge, txn_id) is answered from its record whatever it says now,
	// as a client's repeated send is (node's prepareSend): a resend after an unclear outcome, or
	// a redelivery after a configuration change, is acked rather than dead-lettered although it
	// was applied. apply finds the record.
	if _, ok := s.opts.Cluster.Store().BridgeTxn(b.id, cmd.TxnID); ok {
		return cmd, &checked{Validated: &Validated{}, bridge: b}, nil
	}
	local, org, ok := node.ParseUserID(cmd.Sender)
	if !ok {
		return cmd, nil, refuse(CodeInvalid, "sender is not a user id")
	}
	if org != s.opts.Org || !b.ns.MatchString(local) {
		return cmd, nil, refuse(CodeForbidden, "sender outside the namespace of bridge %q", b.id)
	}
	roomID, rerr := s.allowedRoom(b, cmd.Room)
	if rerr != nil {
		return cmd, nil, rerr
	}
	v, verr := Validate(cmd)
	if verr != nil {
		return cmd, nil, verr
	}
	return cmd, &checked{Validated: v, bridge: b, roomID: roomID}, nil
}

// allowedRoom resolves room (an id or alias) and checks that it is one of b's rooms.
func (s *Service) allowedRoom(b *bridgeConf, room string) (string, *Error) {
	store := s.opts.Cluster.Store()
	roomID := room
	switch {
	case strings.HasPrefix(room, "#"):
		if _, _, ok := node.ParseAlias(room); !ok {
			return "", refuse(CodeInvalid, "room is not a room id or alias")
		}
		id, found := store.RoomByAlias(room)
		if !found {
			for _, r := range b.rooms {
				if r == room {
					if s.joinable(room) {
						return room, nil // resolved by the home org when the user joins
					}
					return "", refuse(CodeNotFound, "no room has the alias %s", room)
				}
			}
			return "", refuse(CodeForbidden, "room not allowed for bridge %q", b.id)
		}
		roomID = id
	default:
		if _, ok := node.ParseRoomID(room); !ok {
			return "", refuse(CodeInvalid, "room is not a room id or alias")
		}
	}
	allowed := false
	for _, r := range b.rooms {
		if r == roomID || r == room {
			allowed = true
			break
		}
		if strings.HasPrefix(r, "#") {
			if id, ok := store.RoomByAlias(r); ok && id == roomID {
				allowed = true
				break
			}
		}
	}
	if !allowed {
		return "", refuse(CodeForbidden, "room not allowed for bridge %q", b.id)
	}
	if _, ok := store.Room(roomID); !ok && !s.joinable(roomID) {
		return "", refuse(CodeNotFound, "no such room %s", roomID)
	}
	return roomID, nil
}

// homeOrg is the org of a room id or alias.
func homeOrg(room string) string {
	if strings.HasPrefix(room, "#") {
		_, org, _ := node.ParseAlias(room)
		return org
	}
	org, _ := node.ParseRoomID(room)
	return org
}

// joinable reports whether room (an id or alias) not known here is another org's that a
// virtual user could join through federation.
func (s *Service) joinable(room string) bool {
	org := homeOrg(room)
	return org != s.opts.Org && s.opts.Remote != nil && s.opts.Remote.IsPeer(org)
}

// apply builds the command's events and commits them as one state.BridgeCommand. A refusal
// (by the checks here or the room's rules in the state machine) is a *Error; err means the
// outcome is unknown and the command should come again.
func (s *Service) apply(ctx context.Context, cmd *Command, c *checked) (state.Result, *Error, error) {
	store := s.opts.Cluster.Store()
	if prior, ok := store.BridgeTxn(c.bridge.id, cmd.TxnID); ok {
		return prior, nil, nil // applied before: a redelivery or a resend
	}
	if _, ok := store.Account(cmd.Sender); ok {
		if _, virtual := store.VirtualUser(cmd.Sender); !virtual {
			return state.Result{}, refuse(CodeForbidden, "%s is a registered account, not a virtual user", cmd.Sender), nil
		}
	}
	room, ok := store.Room(c.roomID)
	home := homeOrg(c.roomID)
	if !ok && (home == s.opts.Org || (cmd.Op != OpJoin && cmd.Op != OpSend)) {
		return state.Result{}, refuse(CodeNotFound, "no such room %s", c.roomID), nil
	}
	mem := store.Membership(c.roomID, cmd.Sender)
	membership := mem.Membership
	var events []*event.Event
	add := func(typ string, stateKey *string, body json.RawMessage) error {
		e, err := s.newEvent(room, cmd.Sender, typ, stateKey, body)
		if err != nil {
			return err
		}
		room.LastEventID, room.Depth = e.EventID, e.Depth
		events = append(events, e)
		return nil
	}
	member := func(m string) error {
		key := cmd.Sender
		body, _ := event.CanonicalValue(map[string]string{"membership": m})
		return add("m.room.member", &key, body)
	}
	// In another org's room the home org decides memberships, as for a client: the join goes
	// through make_join/send_join, the leave through send_state, or send_leave to decline an
	// invite into a room known here only through it (remote.go). Committed here alone, a change
	// would never reach the home org (the outbox leaves state changes of a room to its home org).
	// Without federation they are refused.
	otherOrg := func() *Error {
		if home != s.opts.Org && (s.opts.Remote == nil || !s.opts.Remote.IsPeer(home)) {
			return refuse(CodeForbidden, "bridges join and leave only rooms of %s and of its federation peers", s.opts.Org)
		}
		return nil
	}
	join := func() (*Error, error) {
		if rerr := otherOrg(); rerr != nil {
			return rerr, nil
		}
		if home == s.opts.Org {
			return nil, member(state.Join)
		}
		roomID, rerr, err := s.joinRemote(ctx, cmd, c, mem)
		if rerr != nil || err != nil || roomID == "" { // "": a join done before, to record only
			return rerr, err
		}
		// The joined room is committed here now: what follows builds on it.
		c.roomID = roomID
		if room, ok = store.Room(roomID); !ok {
			return nil, fmt.Errorf("bridge: room %s joined but not stored", roomID)
		}
		return nil, nil
	}
	var err error
	var rerr *Error
	switch cmd.Op {
	case OpJoin:
		if membership != state.Join {
			rerr, err = join()
		}
	case OpSend:
		if membership != state.Join {
			rerr, err = join()
		}
		if rerr == nil && err == nil {
			err = add(c.EventType, nil, c.Content)
		}
	case OpLeave:
		if membership == state.Join || membership == state.Invite {
			switch rerr = otherOrg(); {
			case rerr != nil:
			case home == s.opts.Org:
				err = member(state.Leave)
			default:
				var leave *event.Event
				leave, rerr, err = s.leaveRemote(ctx, cmd, c, room, mem)
				if leave != nil {
					events = append(events, leave)
				}
			}
		}
	case OpTyping:
		if membership != state.Join {
			rerr = refuse(CodeForbidden, "not a member of the room")
		}
	}
	if rerr != nil || err != nil {
		return state.Result{}, rerr, err
	}
	if s.opts.failRecord != nil {
		if err := s.opts.failRecord(cmd); err != nil {
			return state.Result{}, nil, err
		}
	}
	res, err := s.propose(ctx, &state.Command{Kind: state.KindBridge, Bridge: &state.BridgeCommand{
		Bridge: c.bridge.id, TxnID: cmd.TxnID, UserID: cmd.Sender, CreatedTS: time.Now().UnixMilli(), Events: events}})
	if err != nil {
		return state.Result{}, nil, err
	}
	s.forgetUnasked(c.bridge.id, cmd.TxnID) // recorded: no claim of it is left to own
	if !res.OK() {
		return res, refuse(res.Code, "%s", res.Message), nil
	}
	if cmd.Op == OpTyping && s.opts.OnTyping != nil {
		s.opts.OnTyping(c.roomID, cmd.Sender, c.Typing.Typing, c.Typing.Timeout)
	}
	return res, nil, nil
}

// propose commits one command through Raft, waiting up to CommitTimeout.
func (s *Service) propose(ctx context.Context, cmd *state.Command) (state.Result, error) {
	pctx, cancel := context.WithTimeout(ctx, s.opts.CommitTimeout)
	defer cancel()
	return s.opts.Cluster.Propose(pctx, cmd)
}

// newEvent builds and seals an event of a virtual user on top of the room's latest event, as
// node does for its clients (the org key signs it if it leaves the org, in federation).
func (s *Service) newEvent(room *state.Room, sender, typ string, stateKey *string, body json.RawMessage) (*event.Event, error) {
	e := &event.Event{RoomID: room.RoomID, Sender: sender, Origin: s.opts.Org, OriginTS: time.Now().UnixMilli(),
		Type: typ, StateKey: stateKey, Content: body, PrevEvents: []string{}, Depth: room.Depth + 1}
	if room.LastEventID != "" {
		e.PrevEvents = []string{room.LastEventID}
	}
	if err := event.Seal(e); err != nil {
		return nil, fmt.Errorf("bridge: seal event: %w", err)
	}
	return e, nil
}
