package consensus

import (
	"context"
	"log/slog"
	"time"
)

// leaderCheckInterval is how often WhileLeading looks at this node's role.
const leaderCheckInterval = 100 * time.Millisecond

// leadingTerm is the term this node leads in, or 0 when it does not lead (or its role changed
// while it looked).
func (c *Cluster) leadingTerm() uint64 {
	term := c.raft.CurrentTerm()
	if !c.IsLeader() || c.raft.CurrentTerm() != term {
		return 0
	}
	return term
}

// WhileLeading runs the work only one node of the cluster may do (relaying the log to a broker,
// consuming a queue): lead runs while this node leads, from when it has applied everything
// committed before it led, and its context ends when the node stops
// leading or ctx ends. A node that lost the leadership and won it back between two looks at
// its role has its work restarted all the same (a new term is a new lead), so that it catches
// up on what the leader in between committed. First, on every node, prepare runs until it succeeds (declaring the broker
// topology, say), each try bounded by 5 s, failures logged and retried. WhileLeading returns once
// ctx has ended and lead has returned.
func (c *Cluster) WhileLeading(ctx context.Context, log *slog.Logger, prepare func(context.Context) error, lead func(context.Context)) {
	t := time.NewTicker(c.opts.leaderCheckInterval)
	defer t.Stop()
	type leaderRun struct {
		term   uint64
		cancel context.CancelFunc
		ended  chan struct{}
	}
	var run *leaderRun // the lead call in progress, if any
	stop := func() {
		run.cancel()
		<-run.ended
		run = nil
	}
	prepared := false
	for {
		if !prepared {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := prepare(pctx); err != nil {
				log.Warn("prepare for leader work", "err", err)
			} else {
				prepared = true
			}
			cancel()
		}
		var term uint64
		if prepared {
			term = c.leadingTerm()
		}
		leader := term != 0
		if leader && run != nil && run.term != term {
			stop() // led, lost and won again since the last look
		}
		if leader && run == nil {
			// The work reads this node's state (relay cursors, the rooms and events an inbox
			// checks against): it starts once the node has applied everything committed before
			// it led. A node leading right after a restart is still replaying its log, and
			// would take a room it has not replayed yet for an unknown one.
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := c.caughtUpAsLeaderOrFollower(cctx); err != nil {
				log.Warn("leader work waits for this node to apply the log", "err", err)
				leader = false
			}
			cancel()
			leader = leader && c.leadingTerm() == term
		}
		switch {
		case leader && run == nil:
			lctx, cancel := context.WithCancel(ctx)
			run = &leaderRun{term: term, cancel: cancel, ended: make(chan struct{})}
			go func(ended chan struct{}) {
				defer close(ended)
				lead(lctx)
			}(run.ended)
		case !leader && run != nil:
			stop()
		}
		select {
		case <-ctx.Done():
			if run != nil {
				stop()
			}
			return
		case <-t.C:
		}
	}
}
