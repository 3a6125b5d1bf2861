package consensus

import (
	"io"
	"strings"

	"github.com/hashicorp/raft"
)

// raftTargetTransport has every connection Raft opens name the server it is meant for (the
// mux's streamRaftTo handshake), and the node accepting it refuses one meant for another id.
// Raft dials a member by its address alone: a node with another cluster.node_id running at a
// member's address (the member's machine replaced, or another node configured with that
// address) took that member's appends and votes and answered as the member, so the member's
// vote could come from a node that is not it (TestRaftTrafficForAMemberReachesNoOtherNode).
// This guards against misconfiguration, not a security boundary: a node holding the cluster
// secret is trusted, and can claim any id by setting cluster.node_id to it.
//
// Every RPC of raft's transport gets the id with the address, so the wrapper puts the id into
// the address it passes on, which the transport only pools connections by and hands to the
// mux's Dial. raft's ServerAddressProvider would hand over the id alone, and raft also asks it
// for the address it sends as its own in every RPC, which must stay plain (followers forward
// to the leader by it). Embedding keeps what raft type-asserts: Close, pre-vote.
type raftTargetTransport struct {
	*pipelineTransport
}

var (
	_ raft.WithClose   = raftTargetTransport{}
	_ raft.WithPreVote = raftTargetTransport{}
)

func (t raftTargetTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	return t.pipelineTransport.AppendEntriesPipeline(id, raftTarget(id, target))
}

func (t raftTargetTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	return t.pipelineTransport.AppendEntries(id, raftTarget(id, target), args, resp)
}

func (t raftTargetTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.pipelineTransport.RequestVote(id, raftTarget(id, target), args, resp)
}

func (t raftTargetTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.pipelineTransport.RequestPreVote(id, raftTarget(id, target), args, resp)
}

func (t raftTargetTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	return t.pipelineTransport.InstallSnapshot(id, raftTarget(id, target), args, resp, data)
}

func (t raftTargetTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.pipelineTransport.TimeoutNow(id, raftTarget(id, target), args, resp)
}

// raftTarget is the address the transport dials to reach server id at addr: both, so the
// handshake can name the id; raft's configuration keeps the plain address. Raft has an id for
// every server it dials (a configuration with an empty one is invalid).
func raftTarget(id raft.ServerID, addr raft.ServerAddress) raft.ServerAddress {
	return raft.ServerAddress(string(id) + raftTargetSep + string(addr))
}

// raftTargetSep joins an id to an address; no host:port holds it.
const raftTargetSep = "@"

// splitRaftTarget undoes raftTarget: the id ("" for a plain address) and the address.
func splitRaftTarget(target raft.ServerAddress) (id, addr string) {
	i := strings.LastIndex(string(target), raftTargetSep)
	if i < 0 {
		return "", string(target)
	}
	return string(target[:i]), string(target[i+1:])
}
