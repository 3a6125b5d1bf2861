package bridge

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/federation"
)

// Membership of virtual users in rooms of other orgs: the room's home org decides it, so the
// bridge asks it through federation (Options.Remote), as the node does for a client's join
// and leave.
//
// At most once per (bridge, txn_id). The home org commits such a change (and, for a join or a
// leave through send_state, this org commits it too) before the command's record
// (state.BridgeCommand) can be proposed; the two are not one commit. So before asking, the
// command claims its (bridge, txn_id) in the log (state.BridgeClaim), and only the delivery
// whose claim is committed first asks. A delivery that finds a claim (the record failed to
// commit after the home org was asked, or the asking delivery's outcome is unknown) never asks
// for a new change: without that, a join redelivered after the bridge's next command left the
// room would join again. (The exception: the claim is one this node proposed without learning
// that it was committed, so it asked nobody under it.) It finishes the command from what this
// org knows:
//   - the membership is what the command makes it: the change is done; it is recorded (a send
//     then sends its event);
//   - the membership changed since the claim: the change was made and a later one (another
//     command, a kick) followed: a join or leave is recorded without a change, a send is
//     refused, as its sender is no longer joined;
//   - otherwise a leave sends the same leave event again (kept with the claim), which the home
//     org accepts once by its event id (a repeat gets the same answer); a join, which the home
//     org's make_join builds anew each time, is refused M_UNAVAILABLE, not asked again: its
//     outcome at the home org is unknown.
//
// A refusal by the home org other than M_UNAVAILABLE means it changed nothing: the claim is
// released, so the same txn_id may come again, as after any refusal. After M_UNAVAILABLE (no
// answer in time) the home org may have made the change: the claim stays.

// remoteTimeout bounds one federation request for a command; the home org is waited for up to
// 15 s per request (federation), a join makes two.
const remoteTimeout = 40 * time.Second

// joinRemote has the home org of room (an id or alias) admit the command's sender, and returns
// the room id; "" (and no refusal) when a claim of an earlier delivery shows the join was done
// before and only the record is left to commit (see above).
func (s *Service) joinRemote(parent context.Context, cmd *Command, c *checked, mem state.Member) (string, *Error, error) {
	prior := s.claimOf(c, cmd)
	var token string
	switch {
	case prior == nil:
		var rerr *Error
		var err error
		if token, rerr, err = s.claim(parent, cmd, c, nil); rerr != nil || err != nil {
			return "", rerr, err
		}
	case s.unasked(c.bridge.id, cmd.TxnID, prior.Claim):
		token = prior.Claim // this node's claim, whose commit it did not learn of: nobody asked
	case mem.Pos == prior.MemberPos:
		return "", unknownOutcome(), nil
	case cmd.Op == OpJoin:
		return "", nil, nil
	default:
		return "", refuse(CodeForbidden, "not a member of the room: it left after the join this txn_id made"), nil
	}
	ctx, cancel := context.WithTimeout(parent, remoteTimeout)
	defer cancel()
	roomID, err := s.opts.Remote.Join(ctx, cmd.Sender, c.roomID)
	if err != nil {
		rerr, err := s.remoteRefusal(parent, err, cmd, c, token)
		return "", rerr, err
	}
	return roomID, nil, nil
}

// leaveRemote takes the command's sender out of room, another org's, through its home org. A
// leave that declines an invite into a room known here only through it is returned for the
// caller to commit (the home org accepted it); any other leave is committed by the federation
// service, once the home org has.
func (s *Service) leaveRemote(parent context.Context, cmd *Command, c *checked, room *state.Room, mem state.Member) (*event.Event, *Error, error) {
	prior := s.claimOf(c, cmd)
	var leave *event.Event
	var token string
	switch {
	case prior != nil && mem.Pos != prior.MemberPos && !s.unasked(c.bridge.id, cmd.TxnID, prior.Claim):
		return nil, nil, nil // left before, and joined or invited again since: record only
	case prior != nil && prior.Event != nil:
		leave, token = prior.Event, prior.Claim // the same event again
	case prior != nil:
		return nil, unknownOutcome(), nil
	default:
		key := cmd.Sender
		body, _ := event.CanonicalValue(map[string]string{"membership": state.Leave})
		var err error
		if leave, err = s.newEvent(room, cmd.Sender, "m.room.member", &key, body); err != nil {
			return nil, nil, err
		}
		var rerr *Error
		if token, rerr, err = s.claim(parent, cmd, c, leave); rerr != nil || err != nil {
			return nil, rerr, err
		}
	}
	ctx, cancel := context.WithTimeout(parent, remoteTimeout)
	defer cancel()
	if room.Partial && mem.Membership == state.Invite {
		if err := s.opts.Remote.DeclineInvite(ctx, leave); err != nil {
			rerr, err := s.remoteRefusal(parent, err, cmd, c, token)
			return nil, rerr, err
		}
		return leave, nil, nil
	}
	if err := s.opts.Remote.SendState(ctx, leave); err != nil {
		rerr, err := s.remoteRefusal(parent, err, cmd, c, token)
		return nil, rerr, err
	}
	return nil, nil, nil
}

// claimOf is the claim an earlier delivery left on the command's (bridge, txn_id), if any.
func (s *Service) claimOf(c *checked, cmd *Command) *state.ClaimedTxn {
	if prior, ok := s.opts.Cluster.Store().BridgeClaim(c.bridge.id, cmd.TxnID); ok {
		return &prior
	}
	return nil
}

func unknownOutcome() *Error {
	return refuse(CodeUnavailable, "an earlier delivery of this txn_id asked the home org, with no answer: "+
		"not asked again, so that it is applied at most once (send a new txn_id)")
}

// claim commits a claim of the command's (bridge, txn_id) before the home org is asked to
// change the sender's membership, with the event to send if it is made here (a leave), and
// returns the claim's token. An error (not committed, or another delivery's claim or the
// command's record came first) requeues the command: its next delivery finds what it became.
func (s *Service) claim(ctx context.Context, cmd *Command, c *checked, e *event.Event) (string, *Error, error) {
	token := rand.Text()
	res, err := s.propose(ctx, &state.Command{Kind: state.KindBridgeClaim, BridgeClaim: &state.BridgeClaim{
		Bridge: c.bridge.id, TxnID: cmd.TxnID, UserID: cmd.Sender, RoomID: c.roomID, Claim: token, Event: e}})
	if err != nil {
		// Perhaps committed all the same; but the home org is not asked under this token.
		s.unaskedMu.Lock()
		if s.unaskedTokens == nil || len(s.unaskedTokens) >= maxUnaskedTokens {
			// Bounded: a txn_id that never comes back (or is finished on another node) would
			// stay for good. Forgetting one only costs its command an M_UNAVAILABLE refusal.
			s.unaskedTokens = map[string]string{}
		}
		s.unaskedTokens[c.bridge.id+"\x00"+cmd.TxnID] = token
		s.unaskedMu.Unlock()
		return "", nil, err
	}
	if !res.OK() {
		return "", refuse(res.Code, "%s", res.Message), nil
	}
	// Propose returns once this node applied the claim: the store shows whose claim won.
	if got, ok := s.opts.Cluster.Store().BridgeClaim(c.bridge.id, cmd.TxnID); !ok || got.Claim != token {
		return "", nil, fmt.Errorf("bridge: txn_id %q was claimed or applied by another delivery", cmd.TxnID)
	}
	return token, nil, nil
}

// maxUnaskedTokens bounds unaskedTokens.
const maxUnaskedTokens = 4096

// forgetUnasked drops the unasked claim of (bridge, txnID), once its command is recorded.
func (s *Service) forgetUnasked(bridge, txnID string) {
	s.unaskedMu.Lock()
	delete(s.unaskedTokens, bridge+"\x00"+txnID)
	s.unaskedMu.Unlock()
}

// unasked reports (once) whether token is the claim of (bridge, txnID) this node proposed
// without learning that it was committed: the home org was not asked under it, so the command
// may go on as its owner. Only this node knows; after a leader change the new leader does not.
func (s *Service) unasked(bridge, txnID, token string) bool {
	s.unaskedMu.Lock()
	defer s.unaskedMu.Unlock()
	key := bridge + "\x00" + txnID
	if s.unaskedTokens[key] != token {
		return false
	}
	delete(s.unaskedTokens, key)
	return true
}

// remoteRefusal is the refusal of a federation error (remoteRefusal); a refusal by the home
// org itself (not M_UNAVAILABLE) changed nothing there, so the claim is released.
func (s *Service) remoteRefusal(ctx context.Context, err error, cmd *Command, c *checked, token string) (*Error, error) {
	rerr, err := remoteRefusal(ctx, err)
	if rerr == nil || rerr.Code == CodeUnavailable {
		return rerr, err
	}
	_, perr := s.propose(ctx, &state.Command{Kind: state.KindBridgeClaim, BridgeClaim: &state.BridgeClaim{
		Bridge: c.bridge.id, TxnID: cmd.TxnID, UserID: cmd.Sender, RoomID: c.roomID, Claim: token, Release: true}})
	if perr != nil {
		s.log.Warn("bridge: claim not released; the txn_id may not come again", "bridge", c.bridge.id, "txn_id", cmd.TxnID, "err", perr)
	}
	return rerr, nil
}

// remoteRefusal turns a federation error into the command's refusal, with its code: the home
// org's own (M_FORBIDDEN, M_NOT_FOUND, …), or M_UNAVAILABLE for a home org or broker out of
// reach. The latter is not requeued as a failed commit is: each try waits up to 15 s per
// request, and the command queue, which serves every bridge of the org, would wait with it
// through all the queue's deliveries while the org is down. Anything else (no federation
// code), and a request cut short because this node stops leading or shuts down (ctx), comes
// again.
func remoteRefusal(ctx context.Context, err error) (*Error, error) {
	var fe *federation.Error
	if ctx.Err() == nil && errors.As(err, &fe) {
		code, reason := fe.Code, fe.Message
		if relayed, ok := state.RelayedCode(code); !ok {
			// The code is the peer's say: x-parley-error stays "M_CODE: reason" whatever it sent,
			// and a code no refusal carries (a token code) is not passed on.
			code, reason = relayed, fmt.Sprintf("the home org refused with code %q: %s", fe.Code, fe.Message)
		}
		if reason == "" {
			reason = "refused by the home org"
		}
		return refuse(code, "%s", reason), nil
	}
	return nil, err
}
