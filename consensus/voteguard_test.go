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
// campaign with a log that lacks entries it had acknowledged). Once the guard lifts, they go
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
		if err := trans.RequestPreVote("n1", peer.LocalAddr(), &raft.RequestPreVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("n3")}, Term: 7}, &pre); err != nil {
			t.Fatal(err)
		}
		var v raft.RequestVoteResponse
		if err := trans.RequestVote("n1", peer.LocalAddr(), &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("n3")}, Term: 7}, &v); err != nil {
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
