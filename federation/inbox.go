package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/node/content"
)

// handle processes one delivery from this org's inbox. It acks only after the effect is
// committed; a transaction that cannot be trusted is dead-lettered whole; a single bad event
// is dropped and logged while the rest are applied. The transaction worker calls it for
// transactions and the request worker for requests (dispatch.go), each in delivery order.
func (s *Service) handle(ctx context.Context, d amqp091.Delivery) {
	pub := s.replyPublisher()
	if len(d.Body) > MaxMessageBytes {
		s.deadLetter(ctx, pub, d, "M_TOO_LARGE", fmt.Sprintf("message of %d bytes", len(d.Body)))
		return
	}
	switch d.Type {
	case TypeRequest:
		s.handleRequest(ctx, pub, d)
	case TypeTxn, "":
		s.handleTxn(ctx, pub, d)
	default:
		s.deadLetter(ctx, pub, d, "M_BAD_JSON", fmt.Sprintf("unknown message type %q", d.Type))
	}
}

func (s *Service) replyPublisher() *amqp.Publisher {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pub == nil {
		s.pub = amqp.NewPublisher(s.conn)
	}
	return s.pub
}

func (s *Service) handleTxn(ctx context.Context, pub *amqp.Publisher, d amqp091.Delivery) {
	t, err := DecodeTransaction(d.Body)
	if err != nil {
		s.deadLetter(ctx, pub, d, "M_BAD_JSON", err.Error())
		return
	}
	peer, known := s.opts.Peers[t.Origin]
	switch {
	case !known:
		s.deadLetter(ctx, pub, d, "M_FORBIDDEN", "unknown origin "+t.Origin)
		return
	case t.Destination != s.opts.Org:
		s.deadLetter(ctx, pub, d, "M_FORBIDDEN", "wrong destination "+t.Destination)
		return
	}
	if err := verifyMessage(t, t.Origin, peer); err != nil {
		s.deadLetter(ctx, pub, d, "M_FORBIDDEN", err.Error())
		return
	}
	// A join of one of this org's users into a room it does not hold: the answer to the join was
	// lost. The room is fetched first, so that the join and the rest of the transaction apply.
	// It is checked first to be this org's own (its key, intact hashes, a client's content):
	// anything else is a peer's forgery, dropped at once, never requeued nor recovered.
	forgedJoins := make([]bool, len(t.PDUs))
	for i, pdu := range t.PDUs {
		if !s.lostJoin(t.Origin, pdu) {
			continue
		}
		if err := s.checkOwnJoin(pdu); err != nil && !errors.Is(err, errOwnKeyNotReady) {
			s.log.Warn("federation: event dropped", "txn_id", t.TxnID, "origin", t.Origin, "event_id", pdu.EventID,
				"reason", fmt.Errorf("a join of ours that is not ours: %w", err))
			forgedJoins[i] = true
			continue
		}
		if redeliveries(d) < lostJoinRequeues {
			// Most likely the answer is being committed right now (Join) and the relay raced it.
			s.log.Info("federation: own join for a room not held yet, requeueing", "txn_id", t.TxnID, "room_id", pdu.RoomID)
			pause(ctx, 100*time.Millisecond)
			_ = d.Reject(true)
			return
		}
		// An org that did not answer get_missing_events (or this) lately is asked at the pace of
		// gapOutages (missing.go): each request may hold this worker 10 s.
		outcome, err := joinUnanswered, errors.New(t.Origin+" does not answer: not asked again yet")
		if s.gaps.ask(t.Origin, time.Now()) {
			outcome, err = s.recoverJoin(ctx, t.Origin, pdu)
			s.gaps.record(t.Origin, true, outcome == joinUnanswered, time.Now())
		}
		if outcome == joinRecovered {
			continue
		}
		if outcome != joinRefused && redeliveries(d) < gapRequeueBudget && ctx.Err() == nil {
			s.log.Warn("federation: room of a lost join not fetched, requeueing", "txn_id", t.TxnID, "room_id", pdu.RoomID, "err", err)
			pause(ctx, gapRepairPause)
			_ = d.Reject(true)
			return
		}
		if ctx.Err() != nil {
			_ = d.Reject(true) // shutting down: the next leader fetches it
			return
		}
		s.log.Error("federation: room of a lost join not fetched", "txn_id", t.TxnID, "room_id", pdu.RoomID, "user", pdu.Sender, "err", err)
	}
	var cmds []*state.Command
	var accepted, invites []*event.Event
	for i, pdu := range t.PDUs {
		if forgedJoins[i] {
			continue // dropped and logged above
		}
		if s.roomInvite(pdu) { // an invite into a room this org has not joined: invite.go
			if err := s.checkRoomInvite(t.Origin, pdu); err != nil {
				s.log.Warn("federation: event dropped", "txn_id", t.TxnID, "origin", t.Origin, "event_id", pdu.EventID, "reason", err)
			} else if _, dup := s.opts.Cluster.Store().Event(pdu.EventID); !dup {
				invites = append(invites, pdu)
			}
			continue
		}
		if s.awaitingRoom(pdu) && roomOrg(pdu.RoomID) == t.Origin && redeliveries(d) < unknownRoomRetries && !s.forged(pdu) {
			// Most likely a room this org is joining right now, whose state is not committed
			// yet: ask for the transaction again shortly rather than drop the event. Only an
			// event that is its origin's is worth the wait: a forged one is dropped below at once.
			s.log.Info("federation: event for a room not known yet, requeueing", "txn_id", t.TxnID, "room_id", pdu.RoomID)
			pause(ctx, 100*time.Millisecond)
			_ = d.Reject(true) // a reject, which quorum queues count in x-delivery-count (a nack is not, from RabbitMQ 4.3)
			return
		}
		if err := s.checkTxnPDU(t.Origin, pdu); err != nil { // checkPDU plus the home org's say over state, state.go
			s.log.Warn("federation: event dropped", "txn_id", t.TxnID, "origin", t.Origin, "event_id", pdu.EventID, "reason", err)
			continue
		}
		if _, dup := s.opts.Cluster.Store().Event(pdu.EventID); dup {
			continue // a replay or a resend: applied once already
		}
		accepted = append(accepted, pdu)
	}
	// Events this org lacks that the accepted ones build on are fetched and applied first.
	if len(accepted) > 0 {
		ask := s.gaps.ask(t.Origin, time.Now())
		fetched, requested, unanswered := s.fillGaps(ctx, t.Origin, s.inJoinedRooms(accepted), ask)
		wait := s.gaps.record(t.Origin, requested, unanswered, time.Now())
		if wait && redeliveries(d) >= gapRequeueBudget {
			wait = false // the queue's x-delivery-limit would dead-letter it: applied instead
		}
		if wait && ctx.Err() == nil {
			// Applied now, the gap would stay for good: later events build on these, not on
			// the lost ones. The sender may be restarting, so the transaction waits for it,
			// within gapRepairWindow of its first silence (missing.go).
			s.log.Warn("federation: missing events not fetched, requeueing", "txn_id", t.TxnID, "origin", t.Origin)
			pause(ctx, gapRepairPause)
			_ = d.Reject(true)
			return
		}
		if unanswered && ctx.Err() == nil {
			s.log.Error("federation: missing events not fetched, applying with a gap", "txn_id", t.TxnID, "origin", t.Origin)
		}
		if unanswered && ctx.Err() != nil {
			_ = d.Reject(true) // shutting down: not applied with a gap the next leader may repair
			return
		}
		for _, e := range fetched {
			if _, dup := s.opts.Cluster.Store().Event(e.EventID); !dup {
				cmds = append(cmds, &state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: stored(e)}})
			}
		}
	}
	for _, pdu := range accepted {
		cmds = append(cmds, &state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: stored(pdu)}})
	}
	for _, pdu := range invites {
		cmds = append(cmds, &state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: stored(pdu), InviteRoom: true}})
	}
	if len(cmds) > 0 {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		results, err := s.opts.Cluster.ProposeBatch(pctx, cmds)
		cancel()
		if err != nil {
			// Not committed (or unknown): the broker redelivers; applying is idempotent by event_id.
			s.log.Warn("federation: commit failed, requeueing", "txn_id", t.TxnID, "err", err)
			_ = d.Reject(true)
			return
		}
		for i, r := range results {
			if !r.OK() {
				s.log.Warn("federation: event refused by room rules", "event_id", cmds[i].Event.Event.EventID, "code", r.Code, "reason", r.Message)
			}
		}
	}
	// Receipts are stored state, committed like the PDUs: one not committed (no quorum, a
	// leader change) sends the transaction back to the queue, as a failed commit of its PDUs
	// does, rather than losing it with the ack. The transient EDUs are shown once it is all in.
	for _, edu := range t.EDUs {
		if edu.Type != "m.receipt" {
			continue
		}
		if err := s.applyReceipt(ctx, t.Origin, edu); err != nil {
			s.log.Warn("federation: receipt not committed, requeueing", "txn_id", t.TxnID, "origin", t.Origin, "err", err)
			_ = d.Reject(true) // redelivered (x-delivery-limit bounds it); the PDUs and receipts applied are skipped then
			return
		}
	}
	for _, edu := range t.EDUs {
		switch edu.Type {
		case "m.receipt":
		case "m.presence":
			s.applyPresence(t.Origin, edu.Content, t.OriginTS) // presence.go: ordered by origin_ts
		default:
			s.applyEDU(t.Origin, edu, t.OriginTS)
		}
	}
	if err := d.Ack(false); err != nil {
		s.log.Warn("federation: ack failed (the broker will redeliver)", "err", err)
	}
}

// lostJoinRequeues is how often a transaction with a lost join (lostJoin) is requeued before the
// room is fetched: a join's relay can overtake the answer that is being committed.
const lostJoinRequeues = 3

// unknownRoomRetries bounds how often a transaction naming an unknown room is requeued.
const unknownRoomRetries = 10

// gapRequeueBudget bounds how often one transaction is requeued to wait for a gap's repair,
// within the inbox's x-delivery-limit (amqp.DefaultDeliveryLimit, 20): past the limit RabbitMQ
// would dead-letter it, a loss worse than the gap.
const gapRequeueBudget = 15

// pause waits d or until ctx is done.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// redeliveries is how often the broker delivered d before (quorum queues count it).
func redeliveries(d amqp091.Delivery) int64 {
	switch n := d.Headers["x-delivery-count"].(type) {
	case int64:
		return n
	case int32:
		return int64(n)
	case int:
		return int64(n)
	}
	if d.Redelivered {
		return 1
	}
	return 0
}

// stored prepares a remote event for this org's log.
func stored(e *event.Event) *event.Event {
	c := e.Clone()
	c.StreamPos = 0
	if c.Unsigned != nil && c.Unsigned.RedactedBecause == nil {
		c.Unsigned = nil
	}
	return c
}

var errDrop = errors.New("dropped")

// checkPDU verifies an event from txOrigin: hashes, id and signature, sender domain, content
// rules, and that the relaying org may relay it.
func (s *Service) checkPDU(txOrigin string, e *event.Event) error {
	if err := s.verifyOrigin(e); err != nil {
		return err
	}
	if e.Origin != txOrigin && roomOrg(e.RoomID) != txOrigin {
		return fmt.Errorf("%s may not relay events of %s", txOrigin, e.Origin)
	}
	return s.checkRoomContent(e)
}

// checkFetched verifies an event fetched with get_missing_events: against its own origin
// (verifyOrigin) and by the room and content rules of checkPDU, without checkPDU's relay rule.
// That rule keeps an org from pushing other orgs' events in its transactions; an answer was
// asked for, and in a room of three orgs the org asked rightly holds a third org's event that
// this org lacks (the home org's relay of it was lost): under the relay rule the gap stayed.
// The home org keeps its say over state, as in transactions (checkTxnPDU): a state event is
// taken only from the room's home org (answering), which authorized and committed it; so never
// one of a room of this org, which committed every one it accepted (state.go), and never one an
// org made in a third org's room and named as a message's prev_event to slip it in here.
func (s *Service) checkFetched(answering string, e *event.Event) error {
	if err := s.verifyOrigin(e); err != nil {
		return err
	}
	if isStateEvent(e) && roomOrg(e.RoomID) != answering {
		return fmt.Errorf("%w: a state event of a room of %s, from %s", errDrop, roomOrg(e.RoomID), answering)
	}
	return s.checkRoomContent(e)
}

// forged reports whether e is certainly not its origin's (a peer's, or this org's own): the
// checks of an event that need no room. One of this org's cannot be checked while its key is
// not ready: not known to be forged then.
func (s *Service) forged(e *event.Event) bool {
	if e.Origin == s.opts.Org {
		err := s.verifyOwn(e)
		return err != nil && !errors.Is(err, errOwnKeyNotReady)
	}
	return s.verifyOrigin(e) != nil
}

// checkRoomContent checks that e's room is known here and federates, and e's content.
func (s *Service) checkRoomContent(e *event.Event) error {
	room, ok := s.opts.Cluster.Store().Room(e.RoomID)
	if !ok {
		return fmt.Errorf("unknown room %s", e.RoomID)
	}
	if !room.Federate {
		return fmt.Errorf("room %s does not federate", e.RoomID)
	}
	return checkContent(e)
}

// verifyOrigin checks that e really is its origin's: a peer's event (never this org's own),
// sent by one of the origin's users, with intact hashes and id, signed with the origin's key.
func (s *Service) verifyOrigin(e *event.Event) error {
	if e.Origin == s.opts.Org {
		return fmt.Errorf("%w: our own event", errDrop)
	}
	peer, ok := s.opts.Peers[e.Origin]
	if !ok {
		return fmt.Errorf("unknown origin %s", e.Origin)
	}
	if userOrg(e.Sender) != e.Origin {
		return fmt.Errorf("sender %s is not of origin %s", e.Sender, e.Origin)
	}
	if err := event.Check(e); err != nil {
		return err
	}
	return verifyEvent(e, e.Origin, peer)
}

// checkContent applies the client rules to a remote event's content. Content is signed, so it
// cannot be sanitized here: content that sanitizing would change is refused.
func checkContent(e *event.Event) error {
	if event.IsRedactedContent(e) && e.Type != "m.room.member" {
		return nil // redacted: nothing left to check
	}
	var clean json.RawMessage
	var cerr *content.Error
	switch {
	case content.SendableTypes[e.Type]:
		clean, cerr = content.Message(e.Type, e.Content)
	case content.StateTypes[e.Type]:
		clean, cerr = content.State(e.Type, e.Content)
	case e.Type == "m.room.member":
		// What a client can put in a member event: the membership and an optional reason.
		var c struct {
			Membership string  `json:"membership"`
			Reason     *string `json:"reason"`
		}
		if err := decodeStrict(e.Content, &c); err != nil || e.StateKey == nil {
			return errors.New("bad member event")
		}
		switch c.Membership {
		case state.Join, state.Leave, state.Invite, state.Ban:
		default:
			return fmt.Errorf("unknown membership %q", c.Membership)
		}
		return checkReason(c.Reason)
	case e.Type == "m.room.redaction":
		if e.Redacts == "" {
			return errors.New("redaction without redacts")
		}
		var c struct {
			Reason *string `json:"reason"`
		}
		if err := decodeStrict(e.Content, &c); err != nil {
			return errors.New("bad redaction content")
		}
		return checkReason(c.Reason)
	default:
		return fmt.Errorf("event type %s is not accepted over federation", e.Type)
	}
	if cerr != nil {
		return cerr
	}
	canon, err := event.Canonical(e.Content)
	if err != nil {
		return err
	}
	if !bytes.Equal(canon, clean) {
		return errors.New("content is not sanitized (unsafe HTML)")
	}
	return nil
}

// checkReason applies the client's rule for a member or redaction reason (node/ops.go).
func checkReason(reason *string) error {
	if reason == nil {
		return nil
	}
	if cerr := content.CheckText("reason", *reason, content.MaxReasonBytes); cerr != nil {
		return cerr
	}
	return nil
}

// receiptCommitWait bounds the commit of one receipt.
const receiptCommitWait = 5 * time.Second

// applyReceipt commits an m.receipt EDU from origin like a local read marker: the room rules check
// membership and that the event is in the room. A receipt that is malformed, of a user of
// another org, or refused by the room rules is dropped and logged (nil: it would be refused
// again); an error means it was not committed (no quorum, a leader change) and may be later.
func (s *Service) applyReceipt(ctx context.Context, origin string, edu EDU) error {
	var c state.Receipt
	if err := json.Unmarshal(edu.Content, &c); err != nil || userOrg(c.UserID) != origin {
		s.log.Warn("federation: receipt dropped", "origin", origin, "reason", "malformed, or not a user of the origin")
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, receiptCommitWait)
	defer cancel()
	r, err := s.opts.Cluster.Propose(ctx, &state.Command{Kind: state.KindReceipt, Receipt: &c})
	if err != nil {
		return fmt.Errorf("commit the receipt of %s in %s: %w", c.UserID, c.RoomID, err)
	}
	if !r.OK() {
		s.log.Warn("federation: receipt refused by room rules", "user", c.UserID, "room_id", c.RoomID, "code", r.Code, "reason", r.Message)
	}
	return nil
}

// applyEDU shows a transient EDU (typing) to local clients; one of a type the contract does not
// name is dropped and logged, as a bad event is.
func (s *Service) applyEDU(origin string, edu EDU, originTS int64) {
	switch edu.Type {
	case "m.typing":
		c, err := DecodeTyping(origin, edu.Content)
		if err != nil {
			s.log.Warn("federation: typing dropped", "origin", origin, "reason", err)
			return
		}
		if s.opts.OnTyping == nil || s.opts.Cluster.Store().Membership(c.RoomID, c.UserID).Membership != state.Join {
			return
		}
		left := c.Left(time.UnixMilli(originTS), time.Now())
		if c.Typing && left <= 0 {
			return // a notice that has run out already (a redelivery, a backlog): not shown
		}
		// Whole milliseconds: the org's other nodes get it in ms, and read 0 as "no timeout".
		left = max(left.Round(time.Millisecond), time.Millisecond)
		s.opts.OnTyping(c.RoomID, c.UserID, c.Typing, left)
	default:
		typ := edu.Type
		if len(typ) > 100 { // untrusted, and up to the message's 1 MiB
			typ = typ[:100] + "…"
		}
		s.log.Warn("federation: EDU dropped", "origin", origin, "type", typ, "reason", "unknown EDU type")
	}
}

var _ = consensus.ErrUnavailable
