package consensus

import (
	"context"
	"testing"
	"time"
)

// TestEphemeralSendersOfRemovedMembersStop: a node keeps a sender (a goroutine, a queue and a
// connection) per peer address it broadcasts typing and presence to; one whose address is no
// member's any more (removed, or moved) is stopped at the next broadcast rather than kept for
// the node's life.
func TestEphemeralSendersOfRemovedMembersStop(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := waitLeader(t, cs...)
	leader.Broadcast([]byte(`{}`))
	senders := func() map[string]bool {
		leader.ephMu.Lock()
		defer leader.ephMu.Unlock()
		m := map[string]bool{}
		for addr := range leader.ephSenders {
			m[addr] = true
		}
		return m
	}
	if n := len(senders()); n != 2 {
		t.Fatalf("%d senders after a broadcast from a 3-node cluster, want 2", n)
	}
	var gone *Cluster
	for _, c := range cs {
		if c != leader {
			gone = c
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leader.RemoveServer(ctx, gone.NodeID()); err != nil {
		t.Fatal(err)
	}
	leader.Broadcast([]byte(`{}`))
	if s := senders(); len(s) != 1 || s[gone.opts.RaftBind] {
		t.Fatalf("senders after %s was removed: %v (it was at %s)", gone.NodeID(), s, gone.opts.RaftBind)
	}
}
