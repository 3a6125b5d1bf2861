package consensus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/parley-chat/parley/consensus/state"
)

// proposal is one caller's commands: they land in the same log entry, in order.
type proposal struct {
	cmds    []*state.Command
	results []state.Result
	err     error
	done    chan struct{}
}

// Propose commits a command through Raft and returns its result once this node has applied
// it. Concurrent proposals share log entries. An ErrUnavailable error means the outcome is
// unknown: callers retry with the same idempotency key.
func (c *Cluster) Propose(ctx context.Context, cmd *state.Command) (state.Result, error) {
	results, err := c.ProposeGroup(ctx, []*state.Command{cmd})
	if err != nil {
		return state.Result{}, err
	}
	return results[0], nil
}

// ProposeGroup is Propose for several commands that must stay together and in order (one
// connection's pipelined sends): they share one log entry, which other proposals may share
// too (group commit).
func (c *Cluster) ProposeGroup(ctx context.Context, cmds []*state.Command) ([]state.Result, error) {
	p := &proposal{cmds: cmds, done: make(chan struct{})}
	select {
	case c.proposals <- p:
	case <-c.stop:
		return nil, ErrUnavailable
	case <-ctx.Done():
		return nil, fmt.Errorf("consensus: queue proposal: %w", ErrUnavailable)
	}
	select {
	case <-p.done:
		return p.results, p.err
	case <-ctx.Done():
		return nil, fmt.Errorf("consensus: await commit: %w", ErrUnavailable)
	}
}

// defaultBatchLinger is Options.BatchLinger's default. Every log entry costs each node a
// write and an fsync, a replication round and a state machine transaction, whatever it holds.
// Lingering this long while another entry is in flight took the pipelined cluster row from
// 23,400 to 27,000 committed events/s (docs/performance.md); an idle node never lingers.
const defaultBatchLinger = time.Millisecond

// batchLoop groups waiting proposals into log entries. A bounded number of batches is in
// flight at once; while all slots are busy, new proposals pile up and the next batch takes
// them all, so batches grow with load (group commit). A batch that starts while another is
// still in flight also waits up to BatchLinger for more proposals, as PostgreSQL's
// commit_delay waits only when other transactions are active: an idle node never waits.
func (c *Cluster) batchLoop() {
	defer c.wg.Done()
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		var first *proposal
		select {
		case first = <-c.proposals:
		case <-c.stop:
			c.failQueued()
			return
		}
		select {
		case c.inflight <- struct{}{}:
		case <-c.stop:
			fail([]*proposal{first}, ErrUnavailable)
			c.failQueued()
			return
		}
		batch := []*proposal{first}
		n := len(first.cmds)
		var lingered <-chan time.Time // nil (never ready) unless this batch may wait
		if c.opts.BatchLinger > 0 && len(c.inflight) > 1 {
			linger.Reset(c.opts.BatchLinger)
			lingered = linger.C
		}
	drain:
		for n < c.opts.MaxBatchCommands {
			select {
			case p := <-c.proposals:
				batch = append(batch, p)
				n += len(p.cmds)
				continue
			default:
			}
			if lingered == nil {
				break
			}
			select {
			case p := <-c.proposals:
				batch = append(batch, p)
				n += len(p.cmds)
			case <-lingered:
				lingered = nil
				break drain
			case <-c.stop:
				break drain
			}
		}
		if lingered != nil {
			linger.Stop()
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer func() { <-c.inflight }()
			c.commit(batch)
		}()
	}
}

func (c *Cluster) failQueued() {
	for {
		select {
		case p := <-c.proposals:
			fail([]*proposal{p}, ErrUnavailable)
		default:
			return
		}
	}
}

func fail(batch []*proposal, err error) {
	for _, p := range batch {
		p.err = err
		close(p.done)
	}
}

func (c *Cluster) commit(batch []*proposal) {
	var cmds []*state.Command
	for _, p := range batch {
		cmds = append(cmds, p.cmds...)
	}
	data, err := state.EncodeBatch(cmds)
	if err != nil {
		fail(batch, err)
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.ApplyTimeout)
	defer cancel()
	results, index, err := c.applyAnywhere(ctx, data)
	if err == nil && len(results) != len(cmds) {
		err = fmt.Errorf("consensus: %d results for %d commands", len(results), len(cmds))
	}
	answered := time.Now()
	if err == nil {
		// Answer only once this node has applied the entry too, so the client reads its write here.
		err = c.WaitApplied(ctx, index)
	}
	if err != nil {
		fail(batch, err)
		return
	}
	if c.opts.OnCommit != nil {
		c.opts.OnCommit(time.Since(start).Seconds(), time.Since(answered).Seconds(), len(cmds))
	}
	for _, p := range batch {
		p.results, results = results[:len(p.cmds):len(p.cmds)], results[len(p.cmds):]
		close(p.done)
	}
}

// applyAnywhere commits data on the leader: here when this node leads, else forwarded. It
// retries only while the entry surely was not committed (no leader yet, leader unreachable
// before sending), until ctx ends.
func (c *Cluster) applyAnywhere(ctx context.Context, data []byte) ([]state.Result, uint64, error) {
	for {
		var (
			results []state.Result
			index   uint64
			err     error
			retry   bool
		)
		if c.IsLeader() {
			results, index, err, retry = c.applyLocal(ctx, data)
		} else if _, addr := c.Leader(); addr != "" {
			results, index, err, retry = c.fwd.apply(ctx, addr, data)
		} else {
			retry = true
			err = ErrUnavailable
		}
		if !retry {
			return results, index, err
		}
		select {
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("consensus: %v: %w", err, ErrUnavailable)
		case <-c.stop:
			return nil, 0, ErrUnavailable
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Cluster) applyLocal(ctx context.Context, data []byte) (results []state.Result, index uint64, err error, retry bool) {
	if !c.beginRaftCall() {
		return nil, 0, fmt.Errorf("consensus: apply: %w", ErrUnavailable), false
	}
	defer c.raftCalls.Done()
	timeout := time.Until(deadline(ctx))
	f := c.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, 0, err, true // never entered a log we lead
		}
		return nil, 0, fmt.Errorf("consensus: apply: %v: %w", err, ErrUnavailable), false
	}
	results, ok := f.Response().([]state.Result)
	if !ok {
		return nil, 0, fmt.Errorf("consensus: unexpected apply response %T", f.Response()), false
	}
	c.nudgeFollowers(f.Index())
	return results, f.Index(), nil, false
}

func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(5 * time.Second)
}
