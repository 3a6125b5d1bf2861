package bridge

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-chat/parley/bridge/internal/bridgetest"
	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/federation"
)

const peerOrgName = "peer.test"

// peerRoom plays a federation peer for the services (Options.Remote): the home org of one room,
// which admits joins and accepts leaves of virtual users, committing them here as the federation
// service does (the joined room with its state; an accepted state change), and counts them per
// user. The join of user refuse is refused M_FORBIDDEN; the answer to the join of user lose is
// lost (an error without a federation code); the answer to the first leave of user loseLeave
// is lost after the home org committed it (which this org learns of when asked again).
type peerRoom struct {
	roomID    string
	cluster   atomic.Pointer[consensus.Cluster]
	refuse    string
	lose      string
	loseLeave string

	mu     sync.Mutex
	create *event.Event
	joins  map[string]int
	leaves map[string]int
	home   map[string]bool // leaves committed at the home org only
}

func newPeerRoom(t *testing.T) *peerRoom {
	p := &peerRoom{roomID: "!hall:" + peerOrgName, joins: map[string]int{}, leaves: map[string]int{},
		home: map[string]bool{}}
	host := "@host:" + peerOrgName
	body, _ := event.CanonicalValue(state.CreateContent{Creator: host, Visibility: "public", Federate: true})
	key := ""
	p.create = &event.Event{RoomID: p.roomID, Sender: host, Origin: peerOrgName, OriginTS: 1, Type: "m.room.create",
		StateKey: &key, Content: body, PrevEvents: []string{}, Depth: 1}
	if err := event.Seal(p.create); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *peerRoom) IsPeer(org string) bool { return org == peerOrgName }

func (p *peerRoom) Join(ctx context.Context, userID, room string) (string, error) {
	if room != p.roomID {
		return "", &federation.Error{Code: "M_NOT_FOUND", Message: "no such room"}
	}
	if userID == p.refuse {
		return "", &federation.Error{Code: "M_FORBIDDEN", Message: "banned"}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if userID == p.lose {
		p.joins[userID]++
		return "", errors.New("peerRoom: the answer was lost")
	}
	last, depth := p.create.EventID, int64(1)
	if r, ok := p.cluster.Load().Store().Room(p.roomID); ok {
		last, depth = r.LastEventID, r.Depth
	}
	key := userID
	body, _ := event.CanonicalValue(map[string]string{"membership": state.Join})
	join := &event.Event{RoomID: p.roomID, Sender: userID, Origin: org, OriginTS: time.Now().UnixMilli(), Type: "m.room.member",
		StateKey: &key, Content: body, PrevEvents: []string{last}, Depth: depth + 1}
	if err := event.Seal(join); err != nil {
		return "", err
	}
	if err := p.commit(ctx, join); err != nil {
		return "", err
	}
	p.joins[userID]++
	return p.roomID, nil
}

func (p *peerRoom) SendState(ctx context.Context, e *event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, known := p.cluster.Load().Store().Event(e.EventID); known {
		return nil // a repeated request: accepted again, as the home org does
	}
	if p.home[e.EventID] {
		return p.commit(ctx, e) // committed at the home org before: accepted again, not again applied
	}
	p.leaves[e.Sender]++
	if e.Sender == p.loseLeave && len(p.home) == 0 {
		p.home[e.EventID] = true
		return errors.New("peerRoom: the answer was lost")
	}
	return p.commit(ctx, e)
}

func (p *peerRoom) DeclineInvite(context.Context, *event.Event) error {
	return errors.New("peerRoom: no invites")
}

func (p *peerRoom) commit(ctx context.Context, e *event.Event) error {
	res, err := p.cluster.Load().ProposeBatch(ctx, []*state.Command{{Kind: state.KindRemoteRoom,
		RemoteRoom: &state.RemoteRoom{RoomID: p.roomID, Events: []*event.Event{p.create, e}}}})
	if err != nil {
		return err
	}
	if !res[0].OK() {
		return &federation.Error{Code: res[0].Code, Message: res[0].Message}
	}
	return nil
}

func (p *peerRoom) counts(user string) (joins, leaves int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.joins[user], p.leaves[user]
}

// TestRemoteMembershipAppliedOnce: in a room of a peer org, a join or leave is committed by the
// home org before the command's record can be. When the record then fails to commit, the
// command comes again, here after the bridge's next command reversed it: an old join
// redelivered after a leave must not join again, an old leave redelivered after a join must not
// leave again (the home org must not be asked twice for one txn_id). A join the home org refuses
// is dead-lettered and leaves no claim, so the txn_id may come again; a join whose answer was
// lost is not asked again; a leave whose answer was lost sends the same event again.
func TestRemoteMembershipAppliedOnce(t *testing.T) {
	t.Parallel()
	peer := newPeerRoom(t)
	erin, frank, zed, lost, gus := "@irc_erin:"+org, "@irc_frank:"+org, "@irc_zed:"+org, "@irc_lost:"+org, "@irc_gus:"+org
	peer.refuse, peer.lose, peer.loseLeave = zed, lost, gus
	var store atomic.Pointer[state.Store]
	// The record of j1 fails until l2 is applied, that of l4 until j5 is: each comes again
	// after the command that reverses it.
	failUntil := map[string]string{"j1": "l2", "l4": "j5"}
	var failed atomic.Int32
	e := newEnv(t, withRemote(peer, peer.roomID), withFailRecord(func(c *Command) error {
		if next, ok := failUntil[c.TxnID]; ok {
			if _, done := store.Load().BridgeTxn("irc", next); !done {
				failed.Add(1)
				return errors.New("test: the record's commit failed")
			}
		}
		return nil
	}))
	cluster := e.nodes[0].Srv.Cluster()
	peer.cluster.Store(cluster)
	store.Store(cluster.Store())

	op := func(txn, sender, op string) map[string]any {
		return map[string]any{"type": CommandType, "bridge": "irc", "txn_id": txn, "op": op, "room": peer.roomID, "sender": sender}
	}
	e.publish(e.user, "j1", op("j1", erin, OpJoin))
	e.publish(e.user, "l2", op("l2", erin, OpLeave))
	e.publish(e.user, "j3", op("j3", frank, OpJoin))
	e.publish(e.user, "l4", op("l4", frank, OpLeave))
	e.publish(e.user, "j5", op("j5", frank, OpJoin))
	st := cluster.Store()
	bridgetest.WaitFor(t, 60*time.Second, "every command recorded", func() bool {
		for _, txn := range []string{"j1", "l2", "j3", "l4", "j5"} {
			if _, ok := st.BridgeTxn("irc", txn); !ok {
				return false
			}
		}
		return true
	})
	if failed.Load() < 2 {
		t.Fatalf("%d records failed; the test needs both j1's and l4's to", failed.Load())
	}
	for _, txn := range []string{"j1", "l2", "j3", "l4", "j5"} {
		if c, ok := st.BridgeClaim("irc", txn); ok {
			t.Errorf("%s still claimed: %+v", txn, c)
		}
	}
	if joins, leaves := peer.counts(erin); joins != 1 || leaves != 1 {
		t.Errorf("erin: the home org was asked %d joins and %d leaves, want 1 and 1 (j1 applied twice)", joins, leaves)
	}
	if m := st.Membership(peer.roomID, erin).Membership; m != state.Leave {
		t.Errorf("erin is %q after join, leave and the join redelivered, want leave", m)
	}
	if joins, leaves := peer.counts(frank); joins != 2 || leaves != 1 {
		t.Errorf("frank: the home org was asked %d joins and %d leaves, want 2 and 1 (l4 applied twice)", joins, leaves)
	}
	if m := st.Membership(peer.roomID, frank).Membership; m != state.Join {
		t.Errorf("frank is %q after join, leave, join and the leave redelivered, want join", m)
	}
	e.expectNoDeadLetters()

	// The home org refuses zed: dead-lettered, nothing claimed, nothing recorded.
	e.publish(e.user, "z1", op("z1", zed, OpJoin))
	dl := e.deadLetters(1)[0]
	if got, _ := dl.Headers["x-parley-error"].(string); got != "M_FORBIDDEN: banned" {
		t.Fatalf("dead letter %q", got)
	}
	if _, ok := st.BridgeClaim("irc", "z1"); ok {
		t.Fatal("a refused join left its claim")
	}
	if _, ok := st.BridgeTxn("irc", "z1"); ok {
		t.Fatal("a refused join was recorded")
	}

	// The answer to lost's join is lost: when the join comes again, the home org is not asked
	// again (it may have admitted lost); the command is refused M_UNAVAILABLE, and stays claimed.
	e.publish(e.user, "x1", op("x1", lost, OpJoin))
	dl = e.deadLetters(1)[0]
	if got, _ := dl.Headers["x-parley-error"].(string); !strings.HasPrefix(got, "M_UNAVAILABLE: an earlier delivery of this txn_id asked") {
		t.Fatalf("dead letter %q %v", got, dl.Headers)
	}
	if joins, _ := peer.counts(lost); joins != 1 {
		t.Fatalf("the home org was asked %d joins of lost, want 1", joins)
	}
	if _, ok := st.BridgeClaim("irc", "x1"); !ok {
		t.Fatal("the join whose outcome is unknown is not claimed")
	}

	// The answer to gus's leave is lost after the home org committed it: the leave comes again
	// and sends the same event, which the home org accepts without leaving gus a second time.
	e.publish(e.user, "g1", op("g1", gus, OpJoin))
	e.publish(e.user, "g2", op("g2", gus, OpLeave))
	bridgetest.WaitFor(t, 30*time.Second, "gus's leave recorded", func() bool {
		_, ok := st.BridgeTxn("irc", "g2")
		return ok
	})
	if joins, leaves := peer.counts(gus); joins != 1 || leaves != 1 {
		t.Fatalf("gus: the home org was asked %d joins and %d leave events, want 1 and 1", joins, leaves)
	}
	if m := st.Membership(peer.roomID, gus).Membership; m != state.Leave {
		t.Fatalf("gus is %q", m)
	}
	e.expectNoDeadLetters()
}
