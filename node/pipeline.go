package node

import (
	"context"
	"errors"
	"sync"

	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/state"
)

// A client may send several `send` requests without waiting for each `ok` (a bot, a bridge,
// a client flushing its outbox after a reconnect). Handled one at a time, each would wait for
// its own commit round trip, so one connection could never send faster than one message per
// commit. Instead, consecutive sends queue on the session and one goroutine commits everything
// queued as one group (one log entry, shared with other sessions' proposals), in arrival
// order, then answers each. Order is kept: within an
// entry commands apply in order, and a session has at most one entry in flight. Any other
// request waits until the sends before it are answered, so it sees their effects exactly as if
// the connection were handled one request at a time.

// maxQueuedSends bounds a session's queued sends; beyond it the reader waits (back-pressure
// on the socket) instead of queueing more.
const maxQueuedSends = 64

type queuedSend struct {
	id string
	r  *request
}

// queueSend hands a send to the session's committer.
func (s *session) queueSend(id string, r *request) {
	s.sendMu.Lock()
	if s.sendIdle == nil { // sessions built directly by tests
		s.sendIdle = sync.NewCond(&s.sendMu)
	}
	for len(s.sendQ) >= maxQueuedSends {
		s.sendIdle.Wait()
	}
	s.sendQ = append(s.sendQ, queuedSend{id: id, r: r})
	if !s.sending {
		s.sending = true
		s.senders.Add(1)
		go s.commitSends()
	}
	s.sendMu.Unlock()
}

// awaitSends returns once every queued send has been answered.
func (s *session) awaitSends() {
	s.sendMu.Lock()
	for s.sending {
		s.sendIdle.Wait()
	}
	s.sendMu.Unlock()
}

// commitSends commits queued sends, a group at a time, until none are left.
func (s *session) commitSends() {
	defer s.senders.Done()
	for {
		s.sendMu.Lock()
		group := s.sendQ
		s.sendQ = nil
		if len(group) == 0 {
			s.sending = false
			s.sendIdle.Broadcast()
			s.sendMu.Unlock()
			return
		}
		s.sendIdle.Broadcast() // the queue has room again
		s.sendMu.Unlock()
		s.commitGroup(group)
	}
}

// sendAttempts bounds how often a send is built again after the state machine found its event
// already stored (state.CodeEventExists: a twin built on another node in the same millisecond;
// originClock keeps this node from building twins itself).
const sendAttempts = 3

// commitGroup prepares each send (answering the ones that fail or repeat a txn_id at once)
// and commits the rest in one entry. The events of a group all name the room's head as it was
// before the group (siblings, as concurrent senders make), never each other: an event the
// room rules refuse is not stored, and nothing may point at it. Sends refused as twins of a
// stored event are built again and committed in a group of their own, after the rest.
func (s *session) commitGroup(group []queuedSend) {
	for attempt := 1; len(group) > 0; attempt++ {
		group = s.commitGroupOnce(group, attempt == sendAttempts)
	}
}

// commitGroupOnce is one round of commitGroup; it returns the sends to build again, unless
// last, when they are answered with the error.
func (s *session) commitGroupOnce(group []queuedSend, last bool) (again []queuedSend) {
	var cmds []*state.Command
	var queued []queuedSend
	for _, q := range group {
		cmd, result, oerr := s.prepareSend(q.r)
		switch {
		case oerr != nil:
			s.answer(q.id, q.r.Op, nil, oerr)
		case cmd == nil:
			s.answer(q.id, q.r.Op, result, nil)
		default:
			cmds = append(cmds, cmd)
			queued = append(queued, q)
		}
	}
	if len(cmds) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.WriteTimeout)
	defer cancel()
	results, err := s.srv.cluster.ProposeGroup(ctx, cmds)
	for i, q := range queued {
		switch {
		case errors.Is(err, consensus.ErrUnavailable):
			s.answer(q.id, "send", nil, refuse("M_UNAVAILABLE", "the cluster has no reachable leader; retry with the same txn_id"))
		case err != nil:
			s.answer(q.id, "send", nil, refuse("M_UNKNOWN", "commit failed: %v", err))
		case results[i].Code == state.CodeEventExists && !last:
			again = append(again, q)
		case results[i].Code == state.CodeEventExists:
			s.answer(q.id, "send", nil, refuse("M_UNKNOWN", "the send kept building a stored event; retry with the same txn_id"))
		case !results[i].OK():
			s.answer(q.id, "send", nil, refuse(results[i].Code, "%s", results[i].Message))
		default:
			s.answer(q.id, "send", map[string]any{"event_id": results[i].EventID}, nil)
		}
	}
	return again
}

// answer replies to one request with its result or error.
func (s *session) answer(id, op string, result map[string]any, oerr *opError) {
	if oerr != nil {
		if oerr.code == "M_UNKNOWN" || oerr.code == "M_UNAVAILABLE" {
			s.log.Warn("op failed", "op", op, "user", s.user, "code", oerr.code, "err", oerr.msg)
		}
		s.replyError(id, oerr.code, oerr.msg, oerr.extra)
		return
	}
	s.reply(okFrame(id, result))
}
