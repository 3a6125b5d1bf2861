package consensus

import (
	"errors"
	"time"

	"github.com/hashicorp/raft"
)

// hashicorp/raft tells followers the commit index only inside its next append of entries, or
// after CommitTimeout (50–100 ms; it was 5–10 ms) with nothing to send; its heartbeats carry
// none. So when the last entry of the log commits, the followers do not apply it (and cannot
// answer their own proposers, or push it to their clients) until something else is written or
// the timeout fires: at 100 sends/s, a follower waited 6.5 ms of its 10.5 ms commits for that
// with the 5 ms timeout (docs/performance.md). The leader therefore nudges: when an entry it
// applied is still the last one in its log a millisecond later, it appends a barrier, whose
// append carries the new commit index at once. Under load a newer entry nearly always comes
// within that millisecond, and no barrier is written. On a quiet log (entries further apart
// than quietGap) none is likely to come, so the barrier is written at once instead: at 100
// sends/s a follower's commits took 4.1-4.8 ms with the wait and 2.5-3.1 ms without
// (docs/performance.md).

// nudgeDelay is how long the leader gives a newer entry to come and carry the commit index
// before it writes a barrier for that, while entries come often.
const nudgeDelay = time.Millisecond

// quietGap: a nudge asked for this long or longer after the one before finds the log quiet
// (under 200 entries a second), and writes its barrier without waiting for nudgeDelay. A
// barrier per entry then costs little; under load, entries come closer than this and the
// delay keeps barriers out of the log (writing them at once there added 10% to its entries).
const quietGap = 5 * time.Millisecond

// barrierTimeout bounds queueing a barrier (raft.Barrier's timeout); a barrier that cannot
// commit ends when the leader steps down.
const barrierTimeout = time.Second

// nudgeFollowers asks the nudge loop to make sure the followers hear that the entry at index,
// which the leader has just applied, is committed. Any entry appended from now on carries that in
// its append, so the loop remembers the log's last index now and writes a barrier only if no
// entry comes after it within nudgeDelay. Entries already in the log do not count: they may
// have been sent before the commit (a barrier in flight, say), carrying an older commit index.
// A request already waiting covers this one too. A request quietGap or more after the one
// before marks the log quiet (requests, not the loop's turns, are timed: under load a barrier
// the loop waits for can take longer than quietGap).
func (c *Cluster) nudgeFollowers(index uint64) {
	now := time.Now().UnixNano()
	c.nudgeQuiet.Store(now-c.nudgeAsked.Swap(now) >= int64(c.opts.quietGap))
	last := max(c.raft.LastIndex(), index)
	for {
		cur := c.nudgeIndex.Load()
		if cur >= last || c.nudgeIndex.CompareAndSwap(cur, last) {
			break
		}
	}
	select {
	case c.nudge <- struct{}{}:
	default:
	}
}

// nudgeLoop writes one barrier at a time, each on request, on a leader with followers: after
// nudgeDelay unless the log is quiet.
func (c *Cluster) nudgeLoop() {
	defer c.wg.Done()
	delay := time.NewTimer(time.Hour)
	delay.Stop()
	for {
		select {
		case <-c.nudge:
		case <-c.stop:
			return
		}
		if !c.nudgeQuiet.Load() {
			delay.Reset(c.opts.nudgeDelay)
			select {
			case <-delay.C:
			case <-c.stop:
				delay.Stop()
				return
			}
		}
		if c.raft.LastIndex() > c.nudgeIndex.Load() || !c.IsLeader() || !c.hasFollowers() {
			continue // an entry appended since carries the commit index, or no follower needs it
		}
		if err := c.raft.Barrier(barrierTimeout).Error(); err != nil && !errors.Is(err, raft.ErrNotLeader) &&
			!errors.Is(err, raft.ErrLeadershipLost) && !errors.Is(err, raft.ErrRaftShutdown) {
			c.log.Debug("commit-index barrier", "err", err)
		}
	}
}

// hasFollowers reports whether the configuration has a voter other than this node.
func (c *Cluster) hasFollowers() bool {
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if s.ID != raft.ServerID(c.opts.NodeID) && s.Suffrage == raft.Voter {
			return true
		}
	}
	return false
}
