package consensus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// Membership errors. They keep their identity when a follower forwards the change to the
// leader (see remoteMembershipError), so the admin API can answer each with its own status.
var (
	// ErrInvalidRaftAddr: the address is not one another node could dial.
	ErrInvalidRaftAddr = errors.New("consensus: invalid raft address")
	// ErrRaftAddrConflict: the join would take an address from, or give a wrong one to, a
	// member that holds it; nothing was changed.
	ErrRaftAddrConflict = errors.New("consensus: raft address conflict")
	// ErrNotMember: the node id is not in the membership.
	ErrNotMember = errors.New("consensus: no such member")
	// ErrJoinerUnreachable: no node of this cluster answered at the joining node's address
	// (not running yet, another cluster.secret, a firewall); it was not added.
	ErrJoinerUnreachable = errors.New("consensus: the joining node does not answer")
	// ErrJoinerLeads: the node at the joining address leads a cluster of its own (it
	// bootstrapped); it was not added.
	ErrJoinerLeads = errors.New("consensus: the joining node leads a cluster of its own")
)

var membershipErrors = []error{ErrInvalidRaftAddr, ErrRaftAddrConflict, ErrNotMember, ErrJoinerUnreachable, ErrJoinerLeads}

// ValidateRaftAddr checks that addr is host:port that another node can dial: a host that is
// given and is not an unspecified address (0.0.0.0, ::), and a numeric port 1-65535. It is
// config's dialaddr rule, plus port 0, which nothing listens on.
func ValidateRaftAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w %q: must be host:port", ErrInvalidRaftAddr, addr)
	}
	if host == "" {
		return fmt.Errorf("%w %q: the host is missing", ErrInvalidRaftAddr, addr)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Unmap().IsUnspecified() {
			return fmt.Errorf("%w %q: %s is not an address other nodes can dial", ErrInvalidRaftAddr, addr, host)
		}
	} else if len(host) > 253 || !hostnameRE.MatchString(host) {
		return fmt.Errorf("%w %q: the host must be an IP address or a DNS name", ErrInvalidRaftAddr, addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%w %q: the port must be a number from 1 to 65535", ErrInvalidRaftAddr, addr)
	}
	return nil
}

// hostnameRE is config's rule for a DNS-like host name.
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$`)

// AddVoter adds a node to the cluster (on the leader, or forwarded to it). A known id keeps
// its entry, with addr as its new address; an address another member holds is refused
// (ErrRaftAddrConflict). It never removes a member.
func (c *Cluster) AddVoter(ctx context.Context, id, addr string) error {
	if err := ValidateRaftAddr(addr); err != nil {
		return err
	}
	return c.membershipChange(ctx, &forwardRequest{Op: "join", ID: id, Addr: addr})
}

// RemoveServer removes a node from the cluster (on the leader, or forwarded to it). An id that
// is not a member is ErrNotMember.
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
		return remoteMembershipError(resp.Error)
	}
	return nil
}

// remoteError is an error the leader answered a forwarded change with, as text.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// remoteMembershipError turns the leader's answer back into the membership error it was,
// recognised by the sentinel's text it starts with; any other is a plain error.
func remoteMembershipError(msg string) error {
	for _, kind := range membershipErrors {
		if strings.HasPrefix(msg, kind.Error()) {
			return &remoteError{msg: msg, kind: kind}
		}
	}
	return errors.New(msg)
}

func (c *Cluster) addVoterLocal(id, addr string) error {
	if err := ValidateRaftAddr(addr); err != nil { // forwarded by a follower: checked again
		return err
	}
	cfg := c.raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		return fmt.Errorf("consensus: read configuration: %w", err)
	}
	for _, s := range cfg.Configuration().Servers {
		if s.ID == raft.ServerID(id) && s.Address == raft.ServerAddress(addr) && s.Suffrage == raft.Voter {
			return nil // already a member: joining is idempotent
		}
		if s.ID != raft.ServerID(id) && s.Address == raft.ServerAddress(addr) {
			// Replacing s would remove it (the leader, maybe, or a live node under a typo'd id).
			return fmt.Errorf("%w: %s is already the raft address of member %s; remove %s first to give its address to %s",
				ErrRaftAddrConflict, addr, s.ID, s.ID, id)
		}
	}
	if id == c.opts.NodeID && addr != c.opts.Advertise {
		// This node leads, and knows its own address: recording another one would cut it off
		// from the others after its next step-down.
		return fmt.Errorf("%w: %s is this node, the leader, whose raft address is %s, not %s",
			ErrRaftAddrConflict, id, c.opts.Advertise, addr)
	}
	if id != c.opts.NodeID {
		// A voter that does not answer would count toward the quorum from the moment it is
		// added: on a single node, a typo in the address left no quorum to remove it with.
		if err := c.probeJoiner(id, addr); err != nil {
			return err
		}
	}
	// For a known id, raft changes the address of its entry in place (and makes a non-voter
	// a voter): one configuration change, nothing removed, so no step-down and no moment
	// without this node as a voter.
	if err := c.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 0).Error(); err != nil {
		return fmt.Errorf("consensus: add voter %s: %w", id, err)
	}
	c.log.Info("node joined the cluster", "node_id", id, "raft_addr", addr)
	return nil
}

// probeJoiner checks that a node of this cluster (one that presents this cluster.secret, and
// mutual TLS when set) listens at addr, and that it is not the leader of a cluster of its own:
// it asks it for a read index, which a node that does not lead refuses at once.
func (c *Cluster) probeJoiner(id, addr string) error {
	conn, err := c.mux.dial(streamForward, addr, 2*time.Second)
	if err != nil {
		return fmt.Errorf("%w: %s at %s: %v (start it first, with this cluster's cluster.secret)", ErrJoinerUnreachable, id, addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	var resp forwardResponse
	if err = writeFrame(conn, &forwardRequest{Op: "read_index"}, nil); err == nil {
		_, err = readFrame(bufio.NewReader(conn), &resp)
	}
	if err != nil {
		return fmt.Errorf("%w: %s at %s: %v (is it running, with this cluster's cluster.secret?)", ErrJoinerUnreachable, id, addr, err)
	}
	if !resp.Retry {
		return fmt.Errorf("%w: %s at %s leads a cluster of its own: stop it, empty its data_dir, and start it with cluster.bootstrap false (or cluster.join)",
			ErrJoinerLeads, id, addr)
	}
	return nil
}

func (c *Cluster) removeLocal(id string) error {
	cfg := c.raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		return fmt.Errorf("consensus: read configuration: %w", err)
	}
	if !slices.ContainsFunc(cfg.Configuration().Servers, func(s raft.Server) bool { return s.ID == raft.ServerID(id) }) {
		// raft would commit the unchanged configuration and answer success.
		return fmt.Errorf("%w: %s", ErrNotMember, id)
	}
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
