package consensus

import (
	"sync/atomic"
	"time"
)

// commitNotifier tells followers promptly that the leader's entries committed.
//
// hashicorp/raft sends a follower the leader's commit index only with the next entries it
// replicates, or after CommitTimeout (5-10 ms here) when none come. Under load the next entries
// carry it at once; but when the leader goes idle after a commit, every follower learns of it,
// applies it, pushes it to its clients and answers the sends it forwarded up to 10 ms late.
// etcd's raft sends the new commit index as soon as it advances; hashicorp/raft has no call for
// that, so when the last of the leader's entries in flight has applied, the notifier appends an
// empty entry (a barrier), whose replication carries the commit index at once. A barrier never
// follows a barrier and at most one is in flight, so an idle cluster stays idle.
type commitNotifier struct {
	c        *Cluster
	inflight atomic.Int64 // this node's raft.Apply calls not yet finished
	idle     chan struct{}
}

func newCommitNotifier(c *Cluster) *commitNotifier {
	return &commitNotifier{c: c, idle: make(chan struct{}, 1)}
}

// begin counts an entry the leader is about to append.
func (n *commitNotifier) begin() { n.inflight.Add(1) }

// end counts it finished; when it committed and was the last in flight, followers are due a
// notice.
func (n *commitNotifier) end(committed bool) {
	if n.inflight.Add(-1) == 0 && committed {
		select {
		case n.idle <- struct{}{}:
		default: // one is due already
		}
	}
}

// run appends a barrier whenever the leader went idle after a commit, until the cluster stops.
func (n *commitNotifier) run() {
	defer n.c.wg.Done()
	for {
		select {
		case <-n.idle:
		case <-n.c.stop:
			return
		}
		if !n.c.IsLeader() || n.inflight.Load() > 0 {
			continue // entries in flight carry the commit index themselves
		}
		// Waiting keeps at most one barrier in flight. Its outcome does not matter: when it
		// fails, followers learn the commit index the usual way.
		_ = n.c.raft.Barrier(time.Second).Error()
	}
}
