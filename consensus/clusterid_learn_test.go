package consensus

import (
	"testing"
	"time"
)

// TestALeaderWithoutTheIDLearnsItWithAMemberDown: a leader that does not know the cluster id
// (it caught up from a snapshot that covered the id entry, and took over before it asked)
// learns it from a member that records it, even while another member is down. It used to give
// up at the first member that did not answer, so with one member down (listed before the one
// that records the id) it never learned it: its status showed none, and every join through it
// of a node that records this cluster's id was refused as foreign.
func TestALeaderWithoutTheIDLearnsItWithAMemberDown(t *testing.T) {
	cs := openThreeWith(t, func(i int, o *Options) { o.membershipInterval = 50 * time.Millisecond })
	leader := settled(t, cs)
	id := waitClusterID(t, cs...)
	// The first follower in the configuration's order goes down.
	var down *Cluster
	for _, s := range leader.raft.GetConfiguration().Configuration().Servers {
		if string(s.ID) != leader.NodeID() {
			for _, c := range cs {
				if c.NodeID() == string(s.ID) {
					down = c
				}
			}
			break
		}
	}
	if err := down.Close(); err != nil {
		t.Fatal(err)
	}
	// The leader forgets the id (as one that never recorded it).
	leader.ident.mu.Lock()
	leader.ident.id.Store(nil)
	leader.ident.mu.Unlock()
	deadline := time.Now().Add(8 * time.Second)
	for leader.ClusterID() != id {
		if !leader.IsLeader() {
			t.Skip("leadership moved")
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader did not learn cluster id %s from the member that records it, with %s down (it knows %q)",
				id, down.NodeID(), leader.ClusterID())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
