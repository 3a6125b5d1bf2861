package consensus

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
)

// AddVoter adds a node to the cluster (on the leader, or forwarded to it).
func (c *Cluster) AddVoter(ctx context.Context, id, addr string) error {
	return c.membershipChange(ctx, &forwardRequest{Op: "join", ID: id, Addr: addr})
}

// RemoveServer removes a node from the cluster (on the leader, or forwarded to it).
func (c *Cluster) RemoveServer(ctx context.Context, id string) error {
	return c.membershipChange(ctx, &forwardRequest{Op: "remove", ID: id})
}

func (c *Cluster) membershipChange(ctx context.Context, req *forwardRequest) error {
	if c.IsLeader() {
		if req.Op == "join" {
			return c.addVoterLocal(req.ID, req.Addr)
		}
		return c.removeLocal(req.ID)
	}
	_, addr := c.Leader()
	if addr == "" {
		return ErrUnavailable
	}
	resp, _, err := c.fwd.call(ctx, addr, req)
	if err != nil {
		return fmt.Errorf("consensus: forward %s to leader: %w", req.Op, err)
	}
	if resp.Error != "" {
		return errors.New(resp.Error)
	}
	return nil
}

func (c *Cluster) addVoterLocal(id, addr string) error {
	cfg := c.raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		return fmt.Errorf("consensus: read configuration: %w", err)
	}
	for _, s := range cfg.Configuration().Servers {
		if s.ID == raft.ServerID(id) && s.Address == raft.ServerAddress(addr) {
			return nil // already a member: joining is idempotent
		}
		if s.ID == raft.ServerID(id) || s.Address == raft.ServerAddress(addr) {
			if err := c.raft.RemoveServer(s.ID, 0, 0).Error(); err != nil {
				return fmt.Errorf("consensus: replace %s: %w", s.ID, err)
			}
		}
	}
	if err := c.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 0).Error(); err != nil {
		return fmt.Errorf("consensus: add voter %s: %w", id, err)
	}
	c.log.Info("node joined the cluster", "node_id", id, "raft_addr", addr)
	return nil
}

func (c *Cluster) removeLocal(id string) error {
	if err := c.raft.RemoveServer(raft.ServerID(id), 0, 0).Error(); err != nil {
		return fmt.Errorf("consensus: remove %s: %w", id, err)
	}
	c.log.Info("node removed from the cluster", "node_id", id)
	return nil
}

// Member is one server of the cluster as this node sees it.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
}

// Status is this node's view of the cluster.
type Status struct {
	NodeID       string   `json:"node_id"`
	Role         string   `json:"role"`
	Leader       string   `json:"leader"`
	Term         string   `json:"term"`
	AppliedIndex uint64   `json:"applied_index"`
	CommitIndex  string   `json:"commit_index"`
	LastIndex    string   `json:"last_log_index"`
	Members      []Member `json:"members"`
}

// Status reports members, roles, leader and indexes.
func (c *Cluster) Status() (*Status, error) {
	cfg := c.raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		return nil, fmt.Errorf("consensus: read configuration: %w", err)
	}
	leaderID, _ := c.Leader()
	stats := c.raft.Stats()
	st := &Status{NodeID: c.opts.NodeID, Role: roleName(c.raft.State()), Leader: leaderID,
		Term: stats["term"], AppliedIndex: c.AppliedIndex(), CommitIndex: stats["commit_index"], LastIndex: stats["last_log_index"]}
	for _, s := range cfg.Configuration().Servers {
		st.Members = append(st.Members, Member{ID: string(s.ID), RaftAddr: string(s.Address),
			Suffrage: s.Suffrage.String(), Leader: string(s.ID) == leaderID})
	}
	return st, nil
}

func roleName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Candidate:
		return "candidate"
	case raft.Follower:
		return "follower"
	}
	return "shutdown"
}
