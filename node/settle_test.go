package node

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

// applyHold stalls a node's state machine: armed, the next change the node applies is held
// (with everything after it) until released.
type applyHold struct {
	armed   atomic.Bool
	engaged chan struct{}
	release chan struct{}
}

func newApplyHold() *applyHold {
	return &applyHold{engaged: make(chan struct{}), release: make(chan struct{})}
}

func (h *applyHold) observe(*state.Applied) {
	if h.armed.CompareAndSwap(true, false) {
		h.engaged <- struct{}{}
		<-h.release
	}
}

// lagging runs check on the held node while it lacks what changes committed through another
// node: the hold takes effect at the entry nudge commits, before changes, and ends 300 ms into
// check. An answer that waits for the node to catch up sees the changes; one that does not is
// made on the old state.
func (h *applyHold) lagging(t *testing.T, nudge, changes, check func()) {
	t.Helper()
	h.armed.Store(true)
	nudge()
	select {
	case <-h.engaged:
	case <-time.After(10 * time.Second):
		t.Fatal("the held node applied nothing")
	}
	changes()
	released := make(chan struct{})
	time.AfterFunc(300*time.Millisecond, func() {
		h.release <- struct{}{}
		close(released)
	})
	defer func() { <-released }()
	check()
}

// TestALaggingFollowerSettlesBeforeItRefuses checks the pre-checks a node makes from its own
// state before it proposes: a change committed through another node moments ago, which this
// node has not applied yet, must not get a refusal (or, for a rejoin, a no-op) the state the
// client saw committed does not warrant.
func TestALaggingFollowerSettlesBeforeItRefuses(t *testing.T) {
	hold := newApplyHold()
	var heldIndex atomic.Int64
	heldIndex.Store(-1)
	nodes := startCluster(t, func(i int) func(*state.Applied) {
		return func(a *state.Applied) {
			if int64(i) == heldIndex.Load() {
				hold.observe(a)
			}
		}
	})
	var leader, lagger *testNode
	for i, n := range nodes {
		if n.srv.cluster.IsLeader() {
			leader = n
		} else if lagger == nil {
			lagger = n
			heldIndex.Store(int64(i))
		}
	}
	if leader == nil || lagger == nil {
		t.Fatal("no leader and follower")
	}

	_, aliceTok := leader.register("alice")
	bobID, bobTok := leader.register("bob")
	_, daveTok := leader.register("dave")
	frankID, frankTok := leader.register("frank")
	erinID, _ := leader.register("erin")
	onLeader := leader.dial(aliceTok)
	room := onLeader.createRoom(map[string]any{"visibility": "public"})
	leader.dial(bobTok).ok(map[string]any{"op": "join", "room_id": room})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lagger.srv.cluster.CaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	alice, bob := lagger.dial(aliceTok), lagger.dial(bobTok)
	var nudges atomic.Int64
	nudge := func() { onLeader.send(room, fmt.Sprintf("nudge%d", nudges.Add(1)), "nudge") }
	joined := func(user string) bool {
		return leader.srv.cluster.Store().Membership(room, user).Membership == state.Join
	}

	t.Run("invite a user registered elsewhere", func(t *testing.T) {
		var carolID string
		hold.lagging(t, nudge, func() { carolID, _ = leader.register("carol") }, func() {
			alice.ok(map[string]any{"op": "invite", "room_id": room, "user_id": carolID})
		})
	})
	t.Run("read a room joined elsewhere", func(t *testing.T) {
		hold.lagging(t, nudge, func() { leader.dial(daveTok).ok(map[string]any{"op": "join", "room_id": room}) }, func() {
			lagger.dial(daveTok).ok(map[string]any{"op": "history", "room_id": room})
		})
	})
	t.Run("kick a user who joined elsewhere", func(t *testing.T) {
		hold.lagging(t, nudge, func() { leader.dial(frankTok).ok(map[string]any{"op": "join", "room_id": room}) }, func() {
			alice.ok(map[string]any{"op": "kick", "room_id": room, "user_id": frankID})
		})
		if joined(frankID) {
			t.Fatal("the kick did not take")
		}
	})
	t.Run("unban a user banned elsewhere", func(t *testing.T) {
		hold.lagging(t, nudge, func() { onLeader.ok(map[string]any{"op": "ban", "room_id": room, "user_id": erinID}) }, func() {
			alice.ok(map[string]any{"op": "unban", "room_id": room, "user_id": erinID})
		})
		if m := leader.srv.cluster.Store().Membership(room, erinID).Membership; m == state.Ban {
			t.Fatal("the unban did not take")
		}
	})
	t.Run("rejoin after a leave made elsewhere", func(t *testing.T) {
		hold.lagging(t, nudge, func() { leader.dial(bobTok).ok(map[string]any{"op": "leave", "room_id": room}) }, func() {
			bob.ok(map[string]any{"op": "join", "room_id": room})
		})
		if !joined(bobID) {
			t.Fatal("the join was taken for a no-op: bob is not in the room")
		}
	})
}
