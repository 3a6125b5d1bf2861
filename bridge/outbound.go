package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

const (
	// scanLimit bounds how much of the stream one relay pass reads.
	scanLimit = 4000
	// cursorEvery spaces the cursor commits while events keep coming; an idle relay commits at
	// once. A failover repeats at most what was published since the last committed cursor.
	cursorEvery = 250 * time.Millisecond
	// skippedEvery spaces the commits that only skip events of rooms no bridge sees, so that a
	// busy org without bridged traffic does not write a cursor per event; a new leader rescans
	// at most that much.
	skippedEvery = 5 * time.Second
	// publishTimeout bounds one batch: publishing plus waiting for its confirms.
	publishTimeout = 30 * time.Second
)

var errNacked = errors.New("bridge: the broker refused a publish (nack)")

// bridgedRooms is the set of room ids any bridge may see: configured ids, and aliases resolved
// through the store (an alias of a room created later resolves once the room exists).
func (s *Service) bridgedRooms() map[string]bool {
	store := s.opts.Cluster.Store()
	rooms := map[string]bool{}
	for _, b := range s.bridges {
		for _, r := range b.rooms {
			if strings.HasPrefix(r, "#") {
				if id, ok := store.RoomByAlias(r); ok {
					rooms[id] = true
				}
				continue
			}
			rooms[r] = true
		}
	}
	return rooms
}

// relay publishes every committed event of every bridged room to the events exchange, in
// stream order, in batches whose confirms it awaits before it moves the cursor in the Raft log.
// After a crash, failover or broker outage the next leader resumes from the last committed
// cursor (read once WhileLeading has seen this node catch up): at least once, never out of
// order within a pass.
func (s *Service) relay(ctx context.Context) {
	pub := &batchPublisher{s: s}
	defer pub.close()
	store := s.opts.Cluster.Store()
	scanned := store.BridgeCursor()
	committed := scanned
	var lastCommit time.Time
	unrecorded := false // published beyond the committed cursor
	s.log.Info("bridge: relaying events", "from_stream_pos", scanned)
	attempt := 0
	if s.opts.OnBacklog != nil {
		defer s.opts.OnBacklog(0) // another node relays from here on
	}
	for ctx.Err() == nil {
		if s.opts.OnBacklog != nil {
			s.opts.OnBacklog(max(store.StreamPos()-scanned, 0))
		}
		_, changed := s.opts.Cluster.AppliedNotify()
		var read []*event.Event
		known, matched := s.bridgedRooms(), 0 // to stop reading at a full batch
		err := store.StreamAfter(scanned, scanLimit, func(e *event.Event) bool {
			read = append(read, e)
			if known[e.RoomID] {
				matched++
			}
			return matched < s.opts.BatchSize
		})
		if err != nil {
			s.log.Error("bridge: read stream", "err", err)
			sleep(ctx, s.opts.MinBackoff)
			continue
		}
		// Aliases are resolved again after the read: a room created under a bridged alias while
		// the stream was read is known by then, and its first events are not passed over for good.
		rooms := s.bridgedRooms()
		var batch []*event.Event
		last := scanned
		for _, e := range read {
			last = e.StreamPos
			if rooms[e.RoomID] {
				if !routable(e) {
					// The client library would close the node's whole AMQP connection on it, at
					// every retry: one room of a peer with a long id would stop every bridge.
					s.log.Error("bridge: event not published: its routing key is over AMQP's 255 bytes",
						"event_id", e.EventID, "room_id", e.RoomID, "type", e.Type)
					continue
				}
				if batch = append(batch, e); len(batch) == s.opts.BatchSize {
					break
				}
			}
		}
		if len(batch) > 0 {
			if err := pub.publish(ctx, batch); err != nil {
				if ctx.Err() != nil {
					return
				}
				d := backoff(s.opts.MinBackoff, s.opts.MaxBackoff, attempt)
				attempt++
				s.log.Warn("bridge: publishing events failed, retrying", "err", err, "events", len(batch), "retry_in", d)
				sleep(ctx, d)
				// The exchange may be gone (a vhost reset, an operator): declare it again.
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_ = s.declare(dctx)
				cancel()
				continue
			}
			attempt = 0
			unrecorded = true
			if s.opts.OnPublished != nil {
				s.opts.OnPublished(len(batch))
			}
		}
		progressed := last != scanned
		scanned = last
		since := time.Since(lastCommit)
		if scanned > committed && ((unrecorded && (!progressed || since >= cursorEvery)) || since >= skippedEvery) {
			if s.commitCursor(ctx, scanned) {
				committed, lastCommit, unrecorded = scanned, time.Now(), false
			}
		}
		if progressed {
			continue
		}
		select {
		case <-changed:
		case <-time.After(time.Second):
		case <-ctx.Done():
			return
		}
	}
}

// commitCursor records in the Raft log that the stream up to pos was published.
func (s *Service) commitCursor(ctx context.Context, pos int64) bool {
	pctx, cancel := context.WithTimeout(ctx, s.opts.CommitTimeout)
	defer cancel()
	_, err := s.opts.Cluster.Propose(pctx, &state.Command{Kind: state.KindBridgeCursor,
		BridgeCursor: &state.BridgeCursor{Pos: pos}})
	if err != nil {
		// Published but not recorded: the next leader publishes it again (at least once).
		if ctx.Err() == nil {
			s.log.Warn("bridge: cursor not stored", "pos", pos, "err", err)
		}
		return false
	}
	return true
}

// maxRoutingKey is AMQP's bound on a routing key (a short string).
const maxRoutingKey = 255

// routable reports whether e's routing key fits AMQP. Local rooms' always do (config bounds the
// org's name); a peer's room id is the peer's choice.
func routable(e *event.Event) bool {
	return len(e.RoomID)+1+len(e.Type) <= maxRoutingKey // RoutingKey's length: '_' for '.'
}

// WireEvent is an event as published on the events exchange: the client protocol's EVENT,
// without the txn_id a client's own connections see.
func WireEvent(e *event.Event) ([]byte, error) {
	c := *e
	if c.Unsigned != nil {
		u := *c.Unsigned
		u.TxnID = ""
		c.Unsigned = &u
		if u.RedactedBecause == nil {
			c.Unsigned = nil
		}
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("bridge: encode event %s: %w", e.EventID, err)
	}
	return b, nil
}

// batchPublisher publishes a batch in order on one confirm-mode channel and then waits for all
// the confirms (AMQP keeps a channel's messages in order; amqp.Publisher waits for each
// confirm before the next publish, which is slow for catching up on a backlog).
type batchPublisher struct {
	s  *Service
	ch *amqp091.Channel
}

func (p *batchPublisher) channel(ctx context.Context) (*amqp091.Channel, error) {
	if p.ch != nil && !p.ch.IsClosed() {
		return p.ch, nil
	}
	p.close()
	ch, err := p.s.conn.Channel(ctx)
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		p.s.closeChannel(ch)
		return nil, fmt.Errorf("bridge: enable publisher confirms: %w", err)
	}
	p.ch = ch
	return ch, nil
}

func (p *batchPublisher) close() {
	if p.ch != nil {
		p.s.closeChannel(p.ch)
		p.ch = nil
	}
}

func (p *batchPublisher) publish(ctx context.Context, batch []*event.Event) error {
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	ch, err := p.channel(ctx)
	if err != nil {
		return err
	}
	exchange := EventsExchange(p.s.opts.Org)
	confirms := make([]*amqp091.DeferredConfirmation, 0, len(batch))
	for _, e := range batch {
		body, err := WireEvent(e)
		if err != nil {
			return err
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, RoutingKey(e.RoomID, e.Type), false, false,
			amqp091.Publishing{ContentType: "application/json", DeliveryMode: amqp091.Persistent, MessageId: e.EventID,
				Timestamp: time.UnixMilli(e.OriginTS), AppId: "parley", Body: body})
		if err != nil {
			p.close()
			return fmt.Errorf("bridge: publish %s: %w", e.EventID, err)
		}
		confirms = append(confirms, dc)
	}
	for _, dc := range confirms {
		ack, err := dc.WaitContext(ctx)
		if err != nil {
			p.close()
			return fmt.Errorf("bridge: waiting for confirms: %w", err)
		}
		if !ack { // nacked, or the channel closed before the confirm
			p.close()
			return errNacked
		}
	}
	return nil
}

// closeChannel closes ch in the background: a stalled broker may never answer the close, and
// the goroutine then ends with the connection (Close waits for it after closing the Conn).
func (s *Service) closeChannel(ch *amqp091.Channel) {
	if ch.IsClosed() {
		return
	}
	s.closers.Add(1)
	go func() {
		defer s.closers.Done()
		_ = ch.Close()
	}()
}

// backoff is exponential from minD, capped at maxD.
func backoff(minD, maxD time.Duration, attempt int) time.Duration {
	d := minD
	for range min(attempt, 30) {
		d *= 2
		if d >= maxD {
			return maxD
		}
	}
	return d
}
