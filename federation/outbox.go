package federation

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/bridge/amqp"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// scanLimit bounds how much of the stream one relay pass reads.
const scanLimit = 500

// roomOrg is the home org of a room id ("!opaque:org").
func roomOrg(roomID string) string {
	if i := strings.IndexByte(roomID, ':'); i >= 0 {
		return roomID[i+1:]
	}
	return ""
}

func userOrg(userID string) string { return roomOrg(userID) }

// relays reports whether this org relays e to dest: its own events go to every org with a
// joined member when the event was committed (joinedAt, from the stream; the current members for
// events committed before Parley recorded them), and to the target of a membership change; the
// home org of a room also passes on the events of other orgs, so every participant sees every
// event. State changes of a room are relayed by its home org only, also back to the org that
// asked for one (state.go).
func (s *Service) relays(e *event.Event, dest string, joinedAt []string, recorded bool) bool {
	if e.Origin == dest && !s.returnsToOrigin(e) {
		return false
	}
	if e.Origin != s.opts.Org && roomOrg(e.RoomID) != s.opts.Org {
		return false
	}
	if s.leftToHome(e) {
		return false // state changes of another org's room reach everyone from the home org (state.go)
	}
	room, ok := s.opts.Cluster.Store().Room(e.RoomID)
	if !ok || !room.Federate {
		return false
	}
	if e.Type == "m.room.member" && e.StateKey != nil && userOrg(*e.StateKey) == dest {
		return true
	}
	if !recorded {
		joinedAt = s.opts.Cluster.Store().JoinedOrgs(e.RoomID, s.opts.Org)
	}
	return dest != s.opts.Org && contains(joinedAt, dest)
}

// relayed is an event of the stream and the orgs joined to its room when it was committed.
type relayed struct {
	e        *event.Event
	joinedAt []string
	recorded bool
}

// relay sends dest every event it should get, in stream order, in bounded transactions. The
// cursor in the Raft log moves only after the broker confirmed a transaction, so after a
// crash, restart, failover or broker outage relaying resumes where the last confirm reached.
func (s *Service) relay(ctx context.Context, dest string) {
	pub := amqp.NewPublisher(s.conn)
	defer pub.Close()
	store := s.opts.Cluster.Store()
	scanned := store.FedCursor(dest) // events up to here were sent or need not be
	backoff := 100 * time.Millisecond
	if s.opts.OnBacklog != nil {
		defer s.opts.OnBacklog(dest, 0) // another node relays from here on
	}
	for ctx.Err() == nil {
		if s.opts.OnBacklog != nil {
			s.opts.OnBacklog(dest, max(store.StreamPos()-scanned, 0))
		}
		_, changed := s.opts.Cluster.AppliedNotify()
		// Read first, decide after: relays() reads the store too, and a read nested inside
		// another read can deadlock against a writer that needs to grow the database file.
		var window []relayed
		err := store.StreamAfterOrgs(scanned, scanLimit, func(e *event.Event, joinedAt []string, recorded bool) bool {
			window = append(window, relayed{e, joinedAt, recorded})
			return true
		})
		if err != nil {
			s.log.Error("federation: read stream", "err", err)
		}
		var pdus []*event.Event
		last := scanned
		batch := min(s.opts.BatchSize, MaxPDUs) // the receiver refuses more than MaxPDUs whole
		for _, r := range window {
			if s.relays(r.e, dest, r.joinedAt, r.recorded) {
				pdus = append(pdus, r.e)
			}
			last = r.e.StreamPos
			if len(pdus) == batch {
				break
			}
		}
		if len(pdus) == 0 {
			progressed := last != scanned
			scanned = last
			if progressed {
				continue
			}
			select {
			case <-changed:
			case <-time.After(time.Second):
			case <-ctx.Done():
				return
			}
			continue
		}
		sent, err := s.sendTxn(ctx, pub, dest, pdus)
		if err != nil {
			s.log.Warn("federation: relay failed, retrying", "destination", dest, "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		// Only the events that fitted the transaction were sent: the rest are read again
		// from here on the next pass.
		lastSent := pdus[sent-1].StreamPos
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = s.opts.Cluster.Propose(pctx, &state.Command{Kind: state.KindFedCursor,
			FedCursor: &state.FedCursor{Destination: dest, Pos: lastSent}})
		cancel()
		if err != nil {
			// Sent but not recorded: the next leader sends it again and the peer skips it by id.
			s.log.Warn("federation: cursor not stored", "destination", dest, "err", err)
		}
		scanned = lastSent
		if s.opts.OnRelayed != nil {
			s.opts.OnRelayed(dest, time.Since(time.UnixMilli(pdus[0].OriginTS)))
		}
	}
}

// txnID is deterministic for the same events to the same org: a resend after a failure is
// recognisably the same transaction.
func txnID(origin, dest string, pdus []*event.Event) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s", origin, dest)
	for _, p := range pdus {
		fmt.Fprintf(h, "\x00%s", p.EventID)
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:18])
}

// wirePDU strips what is local to this org (stream position, txn ids) from an event.
func wirePDU(e *event.Event) *event.Event {
	c := e.Clone()
	c.StreamPos = 0
	var because *event.Event
	if c.Unsigned != nil && c.Unsigned.RedactedBecause != nil {
		because = c.Unsigned.RedactedBecause.Clone()
		because.StreamPos = 0
		because.Unsigned = nil
	}
	c.Unsigned = nil
	if because != nil {
		c.Unsigned = &event.Unsigned{RedactedBecause: because}
	}
	return c
}

// outgoingPDU is an event as it leaves this org: wirePDU, with this org's signature added to
// its own events (and to a redaction carried under unsigned) that do not have one yet.
//
// Events are signed here, on the way out, rather than when they are created: the signature
// covers the redacted form, which the log fixes, and ed25519 signatures are deterministic, so
// every node signs an event to the same bytes; an org pays for signing (about 35 µs, the
// largest cost of accepting a send) only for the events that leave it.
func (s *Service) outgoingPDU(e *event.Event) (*event.Event, error) {
	c := wirePDU(e)
	for _, ev := range []*event.Event{c, redactedBecause(c)} {
		if ev == nil || ev.Origin != s.opts.Org || len(ev.Signatures[s.opts.Org]) > 0 {
			continue
		}
		if err := s.opts.Keys.Sign(ev, s.opts.Org); err != nil {
			return nil, fmt.Errorf("sign %s: %w", ev.EventID, err)
		}
	}
	return c, nil
}

func redactedBecause(e *event.Event) *event.Event {
	if e.Unsigned == nil {
		return nil
	}
	return e.Unsigned.RedactedBecause
}

// outgoingPDUs is outgoingPDU of each event, refused as a whole when the key is missing.
func (s *Service) outgoingPDUs(events []*event.Event) ([]*event.Event, *Error) {
	out := make([]*event.Event, len(events))
	for i, e := range events {
		c, err := s.outgoingPDU(e)
		if err != nil {
			return nil, unavailable("%v", err)
		}
		out[i] = c
	}
	return out, nil
}

// maxTxnBytes bounds the JSON of an outgoing transaction. The receiver refuses a message over
// MaxMessageBytes whole and dead-letters it (inbox.go), while this org's cursor has moved past it
// on the broker's confirm: without this bound 22 messages of 48 KiB were lost that way. The
// 64 KiB margin covers the envelope (ids, origin_ts, signature: well under 1 KiB), which
// txnPDUs does not count, and a peer that measures a little differently.
const maxTxnBytes = MaxMessageBytes - 64<<10

// A single event always fits one transaction, so at least one is always sent and the outbox
// never stalls. Content is at most content.MaxContentBytes (48 KiB) as received: the client
// rules bound it for this org's events, checkContent for other orgs' events relayed by a home
// org. encoding/json may escape a byte of it to six ("<" becomes "\u003c"), so its JSON is at
// most 288 KiB; the other fields are ids, keys and signatures of at most a few KiB, plus a
// redaction carried under unsigned (its reason is at most content.MaxReasonBytes) and
// prev_events, which this org's events name one of (node/ops.go). An event of maximum size is
// therefore under 300 KiB, a third of maxTxnBytes (TestTxnBatchesStayUnderTheLimit). Only a
// peer's event with thousands of prev_events could be larger; encodeTxn sends it alone and logs
// it, and the receiver dead-letters it for an operator.

// txnPDUs signs pdus for the wire, in order, as many as fit one transaction of maxTxnBytes,
// and at least the first.
func (s *Service) txnPDUs(pdus []*event.Event) ([]*event.Event, error) {
	wire := make([]*event.Event, 0, len(pdus))
	size := 0
	for _, e := range pdus {
		c, err := s.outgoingPDU(e)
		if err != nil {
			return nil, err
		}
		raw, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("encode event %s: %w", e.EventID, err)
		}
		size += len(raw) + 1 // and the comma that separates it from the next
		if size > maxTxnBytes && len(wire) > 0 {
			break
		}
		wire = append(wire, c)
	}
	return wire, nil
}

// encodeTxn builds and signs the transaction to dest of the first events of pdus that fit
// (txnPDUs) and returns its JSON and how many events it carries.
func (s *Service) encodeTxn(dest string, pdus []*event.Event) (body []byte, id string, n int, err error) {
	key, ok := s.opts.Keys.Current()
	if !ok {
		return nil, "", 0, fmt.Errorf("no signing key yet")
	}
	wire, err := s.txnPDUs(pdus)
	if err != nil {
		return nil, "", 0, unavailable("%v", err)
	}
	t := &Transaction{Type: TypeTxn, TxnID: txnID(s.opts.Org, dest, wire), Origin: s.opts.Org, Destination: dest,
		OriginTS: time.Now().UnixMilli(), PDUs: wire, EDUs: []EDU{}}
	if err := signMessage(t, s.opts.Org, key); err != nil {
		return nil, "", 0, err
	}
	body, err = json.Marshal(t)
	if err != nil {
		return nil, "", 0, fmt.Errorf("encode transaction: %w", err)
	}
	if len(body) > MaxMessageBytes {
		s.log.Error("federation: an event too large for any transaction, sent alone (the receiver will refuse it)",
			"destination", dest, "event_id", wire[0].EventID, "bytes", len(body))
	}
	return body, t.TxnID, len(wire), nil
}

// sendTxn sends dest a transaction of the first events of pdus that fit one (at least one)
// and reports how many it sent, once the broker confirmed it.
func (s *Service) sendTxn(ctx context.Context, pub *amqp.Publisher, dest string, pdus []*event.Event) (int, error) {
	body, id, n, err := s.encodeTxn(dest, pdus)
	if err != nil {
		return 0, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.publish(pctx, pub, dest, TypeTxn, id, body); err != nil {
		return 0, err
	}
	return n, nil
}

// SendTyping tells the other orgs in a room that a local user is typing (an EDU, best effort).
func (s *Service) SendTyping(roomID, user string, typing bool, timeout time.Duration) {
	room, ok := s.opts.Cluster.Store().Room(roomID)
	if !ok || !room.Federate {
		return
	}
	content, _ := json.Marshal(map[string]any{"room_id": roomID, "user_id": user, "typing": typing, "timeout_ms": timeout.Milliseconds()})
	for _, dest := range s.opts.Cluster.Store().JoinedOrgs(roomID, s.opts.Org) {
		if _, peer := s.opts.Peers[dest]; !peer {
			continue
		}
		s.sendEDU(dest, EDU{Type: "m.typing", Content: content})
	}
}

// SendReceipt tells the other orgs in a room that a local user read up to an event (an EDU).
func (s *Service) SendReceipt(roomID, user, eventID string) {
	room, ok := s.opts.Cluster.Store().Room(roomID)
	if !ok || !room.Federate {
		return
	}
	content, _ := json.Marshal(map[string]string{"room_id": roomID, "user_id": user, "event_id": eventID})
	for _, dest := range s.opts.Cluster.Store().JoinedOrgs(roomID, s.opts.Org) {
		if _, peer := s.opts.Peers[dest]; peer {
			s.sendEDU(dest, EDU{Type: "m.receipt", Content: content})
		}
	}
}

func (s *Service) sendEDU(dest string, edu EDU) { s.sendEDUs(dest, []EDU{edu}) }

// sendEDUs sends EDUs (at most MaxEDUs) to dest in one transaction of their own, best effort.
func (s *Service) sendEDUs(dest string, edus []EDU) {
	key, ok := s.opts.Keys.Current()
	if !ok {
		return
	}
	t := &Transaction{Type: TypeTxn, TxnID: "edu-" + randomID(), Origin: s.opts.Org, Destination: dest,
		OriginTS: time.Now().UnixMilli(), PDUs: []*event.Event{}, EDUs: edus}
	if signMessage(t, s.opts.Org, key) != nil {
		return
	}
	body, err := json.Marshal(t)
	if err != nil {
		return
	}
	select {
	case s.eduSlots <- struct{}{}:
	default:
		return // typing is best effort: drop rather than pile up
	}
	s.eduMu.Lock()
	q := s.eduQueues[dest]
	if q == nil {
		q = &eduQueue{}
		s.eduQueues[dest] = q
	}
	q.pending = append(q.pending, eduTxn{id: t.TxnID, body: body})
	start := !q.draining
	q.draining = true
	s.eduMu.Unlock()
	if start {
		go s.drainEDUs(dest, q)
	}
}

// EDU transactions to one destination are published in the order they were made, by one
// goroutine per destination while it has any waiting. Published concurrently, a user's
// "offline" could overtake the "online" sent just before it; the peer would then ignore that
// older "online" and never show the "offline" as a change (TestFederationPresence caught it).
type eduQueue struct {
	pending  []eduTxn
	draining bool // a drainEDUs goroutine owns the queue
}

type eduTxn struct {
	id   string
	body []byte
}

// drainEDUs publishes dest's queued EDU transactions in order and ends when none are left.
func (s *Service) drainEDUs(dest string, q *eduQueue) {
	for {
		s.eduMu.Lock()
		if len(q.pending) == 0 {
			q.draining = false
			s.eduMu.Unlock()
			return
		}
		next := q.pending[0]
		q.pending = q.pending[1:]
		s.eduMu.Unlock()
		s.publishEDUAttempts(dest, next)
		<-s.eduSlots
	}
}

// publishEDUAttempts publishes one EDU transaction. A broker that is slow for a moment (a busy
// machine) should not cost an "offline", which nothing re-sends: a few attempts, bounded in
// time, then it is dropped.
func (s *Service) publishEDUAttempts(dest string, txn eduTxn) {
	for attempt := 1; attempt <= eduAttempts; attempt++ {
		err := s.eduPublish(dest, txn.id, txn.body)
		if err == nil {
			return
		}
		if errors.Is(err, amqp.ErrClosed) {
			return // the service is stopping
		}
		if attempt == eduAttempts {
			s.log.Info("federation: EDU dropped", "destination", dest, "err", err)
			return
		}
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
}

// eduAttempts bounds the publishes of one EDU transaction (each up to 2 s).
const eduAttempts = 3

func (s *Service) publishEDU(dest, txnID string, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ch, err := s.conn.Channel(ctx)
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	return publishConfirmed(ctx, ch, dest, eduPublishing(txnID, body))
}

// eduPublishing is an EDU transaction's message: worth delivering for 30 s, no longer (a
// typing notice or presence that old would mislead).
func eduPublishing(id string, body []byte) amqp091.Publishing {
	return amqp091.Publishing{ContentType: "application/json", MessageId: id,
		Type: TypeTxn, Timestamp: time.Now(), Body: body, Expiration: "30000"}
}

// errUnroutable: the broker had no queue for the destination (the peer's inbox was never
// declared on it, or no shovel binds it).
var errUnroutable = errors.New("no route to the destination's inbox")

// publishConfirmed publishes msg to the federation exchange for dest on ch as every message of
// the contract goes: persistent, mandatory, and confirmed by the broker before it returns.
func publishConfirmed(ctx context.Context, ch *amqp091.Channel, dest string, msg amqp091.Publishing) error {
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	// A return comes before the confirm of the same message, on the same channel: once the
	// confirm is in, a return for it is in this buffer already.
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	msg.DeliveryMode = amqp091.Persistent
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, ExchangeFederation, dest, true, false, msg)
	if err != nil {
		return err
	}
	acked, err := dc.WaitContext(ctx)
	switch {
	case err != nil:
		return err
	case !acked:
		return errors.New("the broker refused the message (nack)")
	}
	select {
	case <-returns:
		return errUnroutable
	default:
		return nil
	}
}

func randomID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
