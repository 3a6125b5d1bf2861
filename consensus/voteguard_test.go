package consensus

import (
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A guarded node's own campaign gathers no vote but its own: its vote and pre-vote requests
// are refused before they leave (a node partly caught up holds the membership, and could
// campaign with a log that lacks entries it had acknowledged; here it holds 5 entries). Once the guard lifts, they go
// out as before. The peer answering them here is Raft's network transport on loopback.
func TestAGuardedNodeAsksNoOneForAVote(t *testing.T) {
	peer, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int32
	stop, answered := make(chan struct{}), make(chan struct{})
	go func() { // grants whatever reaches it, until the test ends
		defer close(answered)
		for {
			select {
			case rpc := <-peer.Consumer():
				asked.Add(1)
				switch req := rpc.Command.(type) {
				case *raft.RequestVoteRequest:
					rpc.Respond(&raft.RequestVoteResponse{Term: req.Term, Granted: true}, nil)
				case *raft.RequestPreVoteRequest:
					rpc.Respond(&raft.RequestPreVoteResponse{Term: req.Term, Granted: true}, nil)
				}
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-answered
		_ = peer.Close()
	})

	own, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	trans := newPipelineTransport(own)
	votes := trans.guardVotes("n3", own.LocalAddr(), quietLogger())
	t.Cleanup(func() {
		_ = trans.Close()
		own.CloseStreams() // its pooled connection, which the peer would read from forever
	})

	ask := func() (preVote, vote bool) {
		t.Helper()
		var pre raft.RequestPreVoteResponse
		if err := trans.RequestPreVote("n1", peer.LocalAddr(), &raft.RequestPreVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("n3")}, Term: 7, LastLogIndex: 5}, &pre); err != nil {
			t.Fatal(err)
		}
		var v raft.RequestVoteResponse
		if err := trans.RequestVote("n1", peer.LocalAddr(), &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("n3")}, Term: 7, LastLogIndex: 5}, &v); err != nil {
			t.Fatal(err)
		}
		if pre.Term != 7 || v.Term != 7 {
			t.Fatalf("answers in terms %d and %d, want the candidate's 7 (a higher one makes it step down)", pre.Term, v.Term)
		}
		return pre.Granted, v.Granted
	}
	if pre, v := ask(); pre || v || asked.Load() != 0 {
		t.Fatalf("guarded: pre-vote granted %v, vote granted %v, %d requests reached the peer; want none", pre, v, asked.Load())
	}
	votes.guarded.Store(false)
	if pre, v := ask(); !pre || !v || asked.Load() != 2 {
		t.Fatalf("guard lifted: pre-vote granted %v, vote granted %v, %d requests reached the peer; want both", pre, v, asked.Load())
	}
}

// guardedTransport is a vote guard on Raft's network transport on loopback, as Raft would
// consume it, and a transport to send it RPCs from.
func guardedTransport(t *testing.T) (*voteGuard, *raft.NetworkTransport, raft.ServerAddress) {
	t.Helper()
	own, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	trans := newPipelineTransport(own)
	votes := trans.guardVotes("n3", own.LocalAddr(), quietLogger())
	from, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		from.CloseStreams() // its pooled connections, which the guarded transport would read from forever
		_ = from.Close()
		_ = trans.Close()
	})
	return votes, from, own.LocalAddr()
}

// sendThroughGuard sends req to the guarded transport and reports whether the guard passed it
// on to Raft (answered here with resp) rather than answering it itself.
func sendThroughGuard(t *testing.T, votes *voteGuard, from *raft.NetworkTransport, to raft.ServerAddress, req any, resp any) bool {
	t.Helper()
	errs := make(chan error, 1)
	go func() {
		switch r := req.(type) {
		case *raft.AppendEntriesRequest:
			errs <- from.AppendEntries("n3", to, r, &raft.AppendEntriesResponse{})
		case *raft.RequestVoteRequest:
			errs <- from.RequestVote("n3", to, r, &raft.RequestVoteResponse{})
		case *raft.RequestPreVoteRequest:
			errs <- from.RequestPreVote("n3", to, r, &raft.RequestPreVoteResponse{})
		}
	}()
	select {
	case rpc := <-votes.out:
		rpc.Respond(resp, nil)
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		return true
	case err := <-errs:
		if err != nil {
			t.Fatal(err)
		}
		return false
	case <-time.After(5 * time.Second):
		t.Fatal("no answer in 5 s")
		return false
	}
}

// The peers one node bootstrapped while the others start empty with bootstrap false: the
// guarded nodes vote for a candidate whose log holds at most the bootstrap configuration
// (index 1), or nobody would ever lead (TestEmptyVotersElectTheNodeThatBootstrappedThePeers),
// but only until a leader has reached them: from then on, not before they are caught up.
func TestAGuardedNodeVotesForABootstrapOnlyCandidateUntilALeaderReachesIt(t *testing.T) {
	votes, from, to := guardedTransport(t)
	header := raft.RPCHeader{ID: []byte("n1"), Addr: []byte("n1")}
	vote := func(lastIndex uint64) bool {
		return sendThroughGuard(t, votes, from, to, &raft.RequestVoteRequest{RPCHeader: header, Term: 2, LastLogIndex: lastIndex},
			&raft.RequestVoteResponse{Term: 2, Granted: true})
	}
	preVote := func(lastIndex uint64) bool {
		return sendThroughGuard(t, votes, from, to, &raft.RequestPreVoteRequest{RPCHeader: header, Term: 2, LastLogIndex: lastIndex},
			&raft.RequestPreVoteResponse{Term: 2, Granted: true})
	}
	if !vote(1) || !preVote(1) {
		t.Fatal("a candidate holding only the bootstrap configuration was refused before any leader reached this node")
	}
	if vote(2) || preVote(2) {
		t.Fatal("a candidate past the bootstrap configuration reached Raft while guarded")
	}
	sendThroughGuard(t, votes, from, to, &raft.AppendEntriesRequest{RPCHeader: header, Term: 3, PrevLogEntry: 4, PrevLogTerm: 2, LeaderCommitIndex: 4},
		&raft.AppendEntriesResponse{Term: 3})
	if vote(1) || preVote(1) {
		t.Fatal("a candidate holding only the bootstrap configuration reached Raft after a leader had reached this node")
	}
}

// A wiped voter's old acknowledgements may still count on the leader (raft never lowers a
// follower's match index) above the commit index of the first append the leader sends it; that
// append starts past them (the leader's next index for the node). The guard lifts only once the
// node's log reaches the end of that append too.
func TestTheGuardTargetsTheEndOfTheFirstAppendOfALeader(t *testing.T) {
	votes, from, to := guardedTransport(t)
	header := raft.RPCHeader{ID: []byte("n1"), Addr: []byte("n1")}
	appendEntries := func(term, prev, commit uint64, entries int) {
		req := &raft.AppendEntriesRequest{RPCHeader: header, Term: term, PrevLogEntry: prev, PrevLogTerm: term, LeaderCommitIndex: commit}
		for i := range entries {
			req.Entries = append(req.Entries, &raft.Log{Index: prev + 1 + uint64(i), Term: term, Type: raft.LogNoop})
		}
		if !sendThroughGuard(t, votes, from, to, req, &raft.AppendEntriesResponse{Term: term}) {
			t.Fatal("an append did not reach Raft")
		}
	}
	appendEntries(5, 10, 7, 2)
	if votes.target != 12 { // read after the guard passed the append on: no race
		t.Fatalf("target %d after a first append from 10 with 2 entries and commit index 7, want 12", votes.target)
	}
	appendEntries(5, 12, 20, 3) // the same leader: its first append set the target
	if votes.target != 12 {
		t.Fatalf("target %d after a later append of the same leader, want 12 still", votes.target)
	}
	appendEntries(6, 15, 30, 0) // a new leader, whose commit index is past its append's end
	if votes.target != 30 {
		t.Fatalf("target %d after a new leader's first append with commit index 30, want 30", votes.target)
	}
}
