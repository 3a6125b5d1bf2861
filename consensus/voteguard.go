package consensus

import (
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// A voter whose data_dir was lost and which comes back empty under its old id and address
// (not removed first) is still a voter to Raft, but it has forgotten the entries it
// acknowledged and the vote it gave this term. With an empty log every candidate is "up to
// date" for it: leader A commits X with C's ack while B lags, C comes back empty, A dies, and
// C's vote makes B leader without X, a write acknowledged to a client and now lost.
//
// voteGuard keeps such a node out of elections until a leader has caught it up: it answers
// every vote and pre-vote request itself with a refusal, and refuses its own campaigns before
// they leave (its own vote is cast without the transport; what it cannot get is anyone
// else's). Only a node that started with no Raft log and did not bootstrap is guarded: nodes
// forming a new cluster hold only the bootstrap configuration and must elect.
//
// One kind of candidate gets its vote all the same, until a leader has reached this node: one
// whose log ends at index 1 or before, which holds at most the bootstrap configuration (the
// peers one node bootstrapped while the others start empty with bootstrap false must elect).
// Every leader writes a no-op at index 2 or later and commits it before anything else, so such
// a candidate has never heard from a leader: if none was ever elected, nothing was committed
// that this node could have acknowledged and lost. If one was, every entry it committed is held
// by a majority, and each of them that kept its disk refuses this candidate (its log is longer,
// or ends in a later term); the candidate then wins only if this node's vote replaces that of
// a holder that is down, which is the loss this guard prevents, but only for a candidate that
// missed the cluster's whole life (a bootstrapped voter down since its first start). That one
// case stays open. Once a leader has reached this node, no candidate gets its vote before it
// is caught up. After that no check of the term is needed for the vote it forgot: a candidate
// in that leader's term or an earlier one is refused by Raft itself, this node's term being
// that leader's and its log ending in that term, past any such candidate's.
//
// Caught up means: it holds an entry of the term of the leader that reached it (that
// leader's no-op follows every entry committed before its election), and its log reaches
// both the commit index of that leader's first append (every entry committed before this
// node came back) and the end of that append (PrevLogEntry plus its entries: the leader sent
// from its next index for this node, past every entry this node had acknowledged to it, and
// raft never lowers a follower's match index, so an old acknowledgement may still count toward
// a commit). The guard then lifts for the rest of the process's life.
type voteGuard struct {
	log    *slog.Logger
	header raft.RPCHeader // this node's, on the refusals it answers to candidates

	raft    atomic.Pointer[raft.Raft] // set once Raft runs; guarded until then
	guarded atomic.Bool
	// heardLeader is set once a leader's append reached this node: from then on no candidate,
	// this node included, gets its vote before it is caught up.
	heardLeader atomic.Bool

	in   <-chan raft.RPC // the network transport's
	out  chan raft.RPC   // Raft's
	stop chan struct{}
	done chan struct{}
	once sync.Once

	// Only the forwarding goroutine uses these.
	leaderTerm   uint64 // term of the newest leader whose appends reached this node
	target       uint64 // the index its first append needs this node to reach (voteGuard)
	refusalShown bool

	askLogged atomic.Bool // its own campaign was refused (logged once)
}

func newVoteGuard(in <-chan raft.RPC, id raft.ServerID, addr raft.ServerAddress, log *slog.Logger) *voteGuard {
	g := &voteGuard{log: log, in: in, out: make(chan raft.RPC), stop: make(chan struct{}), done: make(chan struct{}),
		header: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: []byte(addr)}}
	g.guarded.Store(true)
	go g.forward()
	return g
}

// close ends the forwarding goroutine (the transport's Close).
func (g *voteGuard) close() {
	g.once.Do(func() { close(g.stop) })
	<-g.done
}

// forward passes the transport's RPCs on to Raft, answering vote requests itself while
// guarded. Raft holds the forwarded channel for good, so this runs until Close even once the
// guard has lifted.
func (g *voteGuard) forward() {
	defer close(g.done)
	for {
		select {
		case <-g.stop:
			return
		case rpc := <-g.in:
			if g.guarded.Load() && g.refused(rpc) {
				continue
			}
			select {
			case g.out <- rpc:
			case <-g.stop:
				return
			}
		}
	}
}

// refused answers rpc with a refusal if it asks for a vote this node may not give yet. The
// refusal carries the candidate's own term: a higher one would make it step down and adopt
// a term this node never saw, a lower one is ignored as stale.
func (g *voteGuard) refused(rpc raft.RPC) bool {
	switch req := rpc.Command.(type) {
	case *raft.AppendEntriesRequest:
		g.sawAppend(req)
		g.liftIfCaughtUp()
		return false
	case *raft.RequestVoteRequest:
		if g.liftIfCaughtUp() || g.mayVoteFor(req.LastLogIndex) {
			return false
		}
		g.showRefusal(req.ID)
		rpc.Respond(&raft.RequestVoteResponse{RPCHeader: g.header, Term: req.Term}, nil)
		return true
	case *raft.RequestPreVoteRequest:
		if g.liftIfCaughtUp() || g.mayVoteFor(req.LastLogIndex) {
			return false
		}
		g.showRefusal(req.ID)
		rpc.Respond(&raft.RequestPreVoteResponse{RPCHeader: g.header, Term: req.Term}, nil)
		return true
	}
	return false
}

// sawAppend takes the target from the first append of a newer leader term (voteGuard). A
// heartbeat names no position in the log (raft's transport hands those to Raft without the
// guard once Raft runs, but not before), so it sets nothing.
func (g *voteGuard) sawAppend(req *raft.AppendEntriesRequest) {
	if req.Term <= g.leaderTerm || (req.PrevLogEntry == 0 && len(req.Entries) == 0 && req.LeaderCommitIndex == 0) {
		return
	}
	g.leaderTerm = req.Term
	g.target = max(req.LeaderCommitIndex, req.PrevLogEntry+uint64(len(req.Entries)))
	g.heardLeader.Store(true)
}

// mayVoteFor reports whether a candidate whose log ends at lastIndex gets this guarded node's
// vote all the same: one that holds at most the bootstrap configuration, while no leader has
// reached this node (voteGuard). Raft then decides as usual (this node's term, its vote).
func (g *voteGuard) mayVoteFor(lastIndex uint64) bool {
	return lastIndex <= 1 && !g.heardLeader.Load()
}

func (g *voteGuard) showRefusal(candidate []byte) {
	if g.refusalShown {
		return
	}
	g.refusalShown = true
	g.log.Warn("refusing votes: this node started on an empty data_dir and has not been caught up by a leader yet, so its vote could elect a leader without entries it had acknowledged",
		"candidate", string(candidate))
}

// liftIfCaughtUp lifts the guard once this node is caught up (see voteGuard), reporting
// whether it is lifted.
func (g *voteGuard) liftIfCaughtUp() bool {
	if !g.guarded.Load() {
		return true
	}
	r := g.raft.Load()
	if r == nil || g.leaderTerm == 0 {
		return false
	}
	index, term := lastEntry(r)
	if term < g.leaderTerm || index < g.target {
		return false
	}
	g.guarded.Store(false)
	g.log.Info("caught up by the leader: this node, started on an empty data_dir, votes again",
		"last_index", index, "last_term", term, "leader_commit_at_first_append", g.target)
	return true
}

// lastEntry is the index and term of the last entry Raft holds, in its log or its snapshot.
// Raft exports neither term but in Stats (which reads no disk and waits for no loop).
func lastEntry(r *raft.Raft) (index, term uint64) {
	s := r.Stats()
	for _, k := range [][2]string{{"last_log_index", "last_log_term"}, {"last_snapshot_index", "last_snapshot_term"}} {
		i, _ := strconv.ParseUint(s[k[0]], 10, 64)
		t, _ := strconv.ParseUint(s[k[1]], 10, 64)
		if i > index {
			index = i
		}
		if t > term {
			term = t
		}
	}
	return index, term
}

// refuseCampaign reports whether this node's own vote request must not leave: a refused
// candidate cannot gather a majority with its own vote alone. One whose log holds at most the
// bootstrap configuration may ask, on the terms on which it would vote for another (mayVoteFor).
func (g *voteGuard) refuseCampaign(lastIndex uint64) bool {
	if !g.guarded.Load() || g.mayVoteFor(lastIndex) {
		return false
	}
	if !g.askLogged.Swap(true) {
		g.log.Warn("asking no one for a vote: this node started on an empty data_dir and has not been caught up by a leader yet")
	}
	return true
}
