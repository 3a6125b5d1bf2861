package consensus

import (
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// hashicorp/raft's pipelined replication can deadlock (raft v1.7.3, net_transport.go and
// replication.go). With the default two RPCs in flight the pipeline's channels are unbuffered:
// once the leader's decoder for a follower returns (a refused append, as after a leadership
// change), the send loop may still pick a trigger and send once more, and that send waits
// forever for the decoder, which itself waits for the gone consumer. The pipeline is closed
// only by a defer of the stuck function, so the follower never gets another entry (heartbeats
// still reach it, so nobody calls an election), and Raft's Shutdown, which waits for the
// replication goroutine, never returns: Close, and parley serve on SIGTERM, hung.
//
// pipelineTransport bounds the wait instead: a pipelined append that has not been handed over
// within pipelineStall closes its pipeline, so the send fails and raft's replication starts
// over (a fresh pipeline), and Close closes every pipeline as soon as it has asked Raft to shut
// down. A healthy append is handed over within the transport timeout (its write has that
// deadline, and so has the read of the answer ahead of it).
type pipelineTransport struct {
	*raft.NetworkTransport
	stall time.Duration // pipelineStall; tests shorten it

	mu        sync.Mutex
	pipelines map[*stallPipeline]struct{}
	closed    bool

	// votes keeps a node that started on an empty data_dir out of elections until it has
	// been caught up (voteguard.go); nil for every other node.
	votes *voteGuard
}

// The wrapper must keep what raft type-asserts on its transport: closing it on Shutdown, and
// pre-vote (without it raft silently falls back to plain elections).
var (
	_ raft.WithClose   = (*pipelineTransport)(nil)
	_ raft.WithPreVote = (*pipelineTransport)(nil)
)

// pipelineStall is more than a healthy append can wait: one write and one read, each bounded
// by the transport's 10 s timeout.
const pipelineStall = 25 * time.Second

func newPipelineTransport(t *raft.NetworkTransport) *pipelineTransport {
	return &pipelineTransport{NetworkTransport: t, stall: pipelineStall, pipelines: map[*stallPipeline]struct{}{}}
}

// guardVotes keeps this node from giving or asking for a vote until a leader has caught it
// up (voteguard.go). Called before Raft starts, so that Raft consumes the guarded channel.
func (t *pipelineTransport) guardVotes(id raft.ServerID, addr raft.ServerAddress, log *slog.Logger) *voteGuard {
	t.votes = newVoteGuard(t.NetworkTransport.Consumer(), id, addr, log)
	return t.votes
}

// Consumer is what Raft reads the RPCs it is sent from: through the vote guard, if any.
func (t *pipelineTransport) Consumer() <-chan raft.RPC {
	if t.votes != nil {
		return t.votes.out
	}
	return t.NetworkTransport.Consumer()
}

// Close closes the network transport, then ends the vote guard's goroutine.
func (t *pipelineTransport) Close() error {
	err := t.NetworkTransport.Close()
	if t.votes != nil {
		t.votes.close()
	}
	return err
}

// RequestVote asks target for its vote, unless the vote guard holds this node back.
func (t *pipelineTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if t.votes != nil && t.votes.refuseCampaign(args.LastLogIndex) {
		*resp = raft.RequestVoteResponse{Term: args.Term} // refused, in its own term: no step-down
		return nil
	}
	return t.NetworkTransport.RequestVote(id, target, args, resp)
}

// RequestPreVote asks target for its pre-vote, unless the vote guard holds this node back.
func (t *pipelineTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if t.votes != nil && t.votes.refuseCampaign(args.LastLogIndex) {
		*resp = raft.RequestPreVoteResponse{Term: args.Term}
		return nil
	}
	return t.NetworkTransport.RequestPreVote(id, target, args, resp)
}

// AppendEntriesPipeline opens a pipeline to target whose appends cannot wait forever.
func (t *pipelineTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := t.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	sp := &stallPipeline{AppendPipeline: p, t: t}
	t.mu.Lock()
	closed := t.closed
	if !closed {
		t.pipelines[sp] = struct{}{}
	}
	t.mu.Unlock()
	if closed {
		_ = p.Close()
		return nil, raft.ErrPipelineShutdown
	}
	return sp, nil
}

// closePipelines closes every open pipeline, and any opened from now on, so that a
// replication goroutine stuck in an append ends and Raft's Shutdown can finish.
func (t *pipelineTransport) closePipelines() {
	t.mu.Lock()
	t.closed = true
	open := make([]*stallPipeline, 0, len(t.pipelines))
	for p := range t.pipelines {
		open = append(open, p)
	}
	t.mu.Unlock()
	for _, p := range open {
		_ = p.Close()
	}
}

type stallPipeline struct {
	raft.AppendPipeline
	t *pipelineTransport
}

// AppendEntries sends an append, closing the pipeline if the send is not handed over within
// the stall limit (the deadlock above); the send then fails with ErrPipelineShutdown.
func (p *stallPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	timer := time.AfterFunc(p.t.stall, func() { _ = p.Close() })
	f, err := p.AppendPipeline.AppendEntries(args, resp)
	timer.Stop()
	return f, err
}

func (p *stallPipeline) Close() error {
	p.t.mu.Lock()
	delete(p.t.pipelines, p)
	p.t.mu.Unlock()
	return p.AppendPipeline.Close() // idempotent
}
