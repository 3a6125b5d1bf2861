package consensus

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/parley-chat/parley/consensus/state"
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
	// ErrJoinerForeign: the joining node's data_dir holds another cluster's data (another
	// cluster id, or a Raft log without one that this cluster did not write); it was not
	// added. It is a kind of ErrJoinerLeads (errors.Is holds for both): either way the node
	// belongs to a cluster other than this one, and must be emptied before it can join.
	ErrJoinerForeign error = &subKind{msg: "consensus: the joining node's data_dir belongs to another cluster", parent: ErrJoinerLeads}
	// ErrJoinerCatchingUp: the joining node was added as a non-voter and has not caught up
	// with the leader's log within the join's wait. It stays a non-voter, which does not count
	// toward the quorum, and the leader makes it a voter once it has caught up.
	ErrJoinerCatchingUp = errors.New("consensus: the joining node has not caught up yet")
	// ErrLastVoter: the node is the cluster's only voter; without it there would be no
	// quorum to commit anything, nor to add a node again. Nothing was changed.
	ErrLastVoter = errors.New("consensus: the last voter cannot be removed")
)

var membershipErrors = []error{ErrInvalidRaftAddr, ErrRaftAddrConflict, ErrNotMember, ErrJoinerUnreachable,
	ErrJoinerLeads, ErrJoinerForeign, ErrJoinerCatchingUp, ErrLastVoter}

// subKind is a sentinel error that is also a kind of its parent: errors.Is(err, parent) holds
// for it, so code that answers the parent answers it the same way.
type subKind struct {
	msg    string
	parent error
}

func (e *subKind) Error() string        { return e.msg }
func (e *subKind) Is(target error) bool { return target == e.parent }

// Staged joins. A new node is added as a non-voter, which receives the log but counts toward
// no quorum, and is made a voter once it has caught up: Consul autopilot's and etcd learners'
// way. A voter added at once counted from that moment, so a joiner that died or was slow to
// catch up took a vote the cluster then lacked (on a single node, the only quorum).
const (
	// joinMaxLag is how many entries behind the leader's last one a non-voter may be and still
	// count as caught up (Consul autopilot's MaxTrailingLogs is 250): at most four appends of
	// 64 entries, which a live follower receives within a round trip or two.
	joinMaxLag = 256
	// joinCatchUpWait bounds how long a join waits for its non-voter to catch up before it
	// answers ErrJoinerCatchingUp; it is also kept under the caller's deadline (the admin API
	// gives a join 15 s).
	joinCatchUpWait = 10 * time.Second
	// membershipInterval is how often every node's membership loop looks at the cluster id,
	// and the leader's at the non-voters it may promote.
	membershipInterval = 250 * time.Millisecond
)

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

// AddVoter adds a node to the cluster (on the leader, or forwarded to it): a new node first as
// a non-voter, made a voter once it has caught up with the leader's log (ErrJoinerCatchingUp
// when it has not within the wait: it stays a non-voter, and the leader promotes it once it
// has). A known id keeps its entry, with addr as its new address; an address another member
// holds is refused (ErrRaftAddrConflict). It never removes a member, and never adds a node
// whose data_dir belongs to another cluster (ErrJoinerLeads, ErrJoinerForeign).
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
			return c.addVoterLocal(ctx, req.ID, req.Addr)
		}
		return c.removeLocal(req.ID)
	}
	_, addr := c.Leader()
	if addr == "" {
		return ErrUnavailable
	}
	if req.Op == "join" {
		// The leader answers a join once its node is a voter, or when the wait ends: within
		// this caller's deadline, with a second to spare for the answer to travel back.
		req.WaitMs = max(time.Until(deadline(ctx))-time.Second, time.Millisecond).Milliseconds() // 0 would mean the leader's own timeout
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

// addVoterLocal is AddVoter on the leader. ctx bounds the wait for a non-voter to catch up.
func (c *Cluster) addVoterLocal(ctx context.Context, id, addr string) error {
	if err := ValidateRaftAddr(addr); err != nil { // forwarded by a follower: checked again
		return err
	}
	cfg := c.raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		return fmt.Errorf("consensus: read configuration: %w", err)
	}
	var known *raft.Server
	for _, s := range cfg.Configuration().Servers {
		if s.ID == raft.ServerID(id) && s.Address == raft.ServerAddress(addr) && s.Suffrage == raft.Voter {
			return c.checkVoterRejoining(ctx, id, addr) // already a member: joining is idempotent
		}
		if s.ID != raft.ServerID(id) && s.Address == raft.ServerAddress(addr) {
			// Replacing s would remove it (the leader, maybe, or a live node under a typo'd id).
			return fmt.Errorf("%w: %s is already the raft address of member %s; remove %s first to give its address to %s",
				ErrRaftAddrConflict, addr, s.ID, s.ID, id)
		}
		if s.ID == raft.ServerID(id) {
			known = &s
		}
	}
	if id == c.opts.NodeID {
		if addr != c.opts.Advertise {
			// This node leads, and knows its own address: recording another one would cut it
			// off from the others after its next step-down.
			return fmt.Errorf("%w: %s is this node, the leader, whose raft address is %s, not %s",
				ErrRaftAddrConflict, id, c.opts.Advertise, addr)
		}
		// The leader's own entry moved to where it runs now (a single node restarted at a new
		// address): in place, as for a moved voter below.
		if err := c.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 0).Error(); err != nil {
			return fmt.Errorf("consensus: add voter %s: %w", id, err)
		}
		c.log.Info("node joined the cluster", "node_id", id, "raft_addr", addr)
		return nil
	}
	// A node that does not answer would take a vote from the moment it is a voter (on a
	// single node, a typo in the address left no quorum to remove it with); one whose data_dir
	// is another cluster's would mix that cluster's log into this one's.
	info, err := c.probeJoiner(ctx, id, addr)
	if err != nil {
		return err
	}
	if err := c.checkJoinerIdentity(id, addr, info, known != nil); err != nil {
		return err
	}
	if info.NodeID != id {
		// Raft counts votes by the id in the membership: a node entered under another's id (a
		// typo, or a member's id "moved" to where another node runs) would let that id vote
		// twice in a term, from each node, and elect two leaders. Checked after the cluster's
		// identity, whose refusal stops an automatic joiner for good.
		return fmt.Errorf("%w: the node at %s is %s, not %s: join it under its own cluster.node_id, or give %s the address its node runs at",
			ErrRaftAddrConflict, addr, strconv.Quote(info.NodeID), id, id)
	}
	if known != nil && known.Suffrage == raft.Voter && !info.HasState {
		// A voter's entry moves in place and votes at once: right for a node that moved with
		// its data_dir; an empty one has none of the entries the voter acknowledged, so a
		// committed entry held by one other node could be lost at the next election.
		return fmt.Errorf("%w: %s at %s holds no Raft log, and %s is a voter at %s: a member that moves brings its data_dir; to replace it with an empty node, remove it first (parley cluster remove --node-id %s), then join it again",
			ErrRaftAddrConflict, id, addr, id, known.Address, id)
	}
	if mine := c.ident.get(); mine != "" && info.ClusterID == "" {
		// Recorded before the node is added, so that it never takes this cluster's log without
		// the id that goes with it.
		if err := c.tellClusterID(ctx, id, addr, mine); err != nil {
			return err
		}
	}
	if known != nil && known.Suffrage == raft.Voter {
		// A voter that moved: raft changes the address of its entry in place. One
		// configuration change, nothing removed, no moment with one voter less.
		if err := c.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), cfg.Index(), 0).Error(); err != nil {
			return fmt.Errorf("consensus: move voter %s: %w", id, err)
		}
		c.log.Info("member moved to a new raft address", "node_id", id, "raft_addr", addr)
		return nil
	}
	if known == nil || known.Address != raft.ServerAddress(addr) {
		// A non-voter: it receives the log, and takes no part in any quorum until promoted.
		if err := c.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), cfg.Index(), 0).Error(); err != nil {
			return fmt.Errorf("consensus: add non-voter %s: %w", id, err)
		}
		c.log.Info("node joined the cluster as a non-voter; it becomes a voter once it has caught up", "node_id", id, "raft_addr", addr)
	}
	return c.promoteWhenCaughtUp(ctx, id, addr)
}

// checkVoterRejoining answers a join of a voter already at that address: nothing to change,
// unless the node there is no longer this cluster's member (its data_dir emptied and a cluster
// of its own bootstrapped in it, which then leads or records another id): that is refused as
// any such joiner is, or the join's ok would hide that Raft now mixes the two logs. A member
// that does not answer (down, restarting) is still a member: ok.
func (c *Cluster) checkVoterRejoining(ctx context.Context, id, addr string) error {
	if id == c.opts.NodeID {
		return nil
	}
	info, err := c.askProbe(ctx, addr)
	if err != nil {
		return nil
	}
	if info.NodeID != id {
		// Another node took the member's address: Raft sends it the member's traffic, and it
		// would vote as that member (with a log that is not the member's).
		return fmt.Errorf("%w: the node at %s is %s, not %s, the member at that address: stop it, or remove %s (parley cluster remove --node-id %s) and join %s under its own id",
			ErrRaftAddrConflict, addr, strconv.Quote(info.NodeID), id, id, id, strconv.Quote(info.NodeID))
	}
	// A member that answers that it leads, with this cluster's id, is this cluster's old leader
	// not yet aware of the new one: still a member. Without any id while this cluster has one,
	// it leads a cluster of its own that has not minted its id yet.
	switch mine := c.ident.get(); {
	case mine != "" && info.ClusterID != "" && info.ClusterID != mine:
		return fmt.Errorf("%w: %s at %s, a member of this cluster, records cluster %s, and this is cluster %s: remove it (parley cluster remove --node-id %s), stop it, empty its data_dir, and join it again",
			ErrJoinerForeign, id, addr, info.ClusterID, mine, id)
	case mine != "" && info.ClusterID == "" && info.Leader:
		return fmt.Errorf("%w: %s at %s, a member of this cluster (cluster id %s), leads a cluster of its own now: remove it (parley cluster remove --node-id %s), stop it, empty its data_dir, and join it again",
			ErrJoinerLeads, id, addr, mine, id)
	}
	return nil
}

// probeInfo is what a node answers a probe with: who it is, which cluster it belongs to, and
// how far its log goes.
type probeInfo struct {
	NodeID    string `json:"node_id"`
	ClusterID string `json:"cluster_id,omitempty"`
	// Leader: it leads (a cluster of its own, when it is asked to join this one).
	Leader bool `json:"leader,omitempty"`
	// HasState: its data_dir holds a Raft log, a term or a snapshot.
	HasState  bool   `json:"has_state,omitempty"`
	Term      uint64 `json:"term,omitempty"`
	LastIndex uint64 `json:"last_index,omitempty"`
	Applied   uint64 `json:"applied_index,omitempty"`
	// Bootstrap: the configuration its log starts with (firstConfiguration), "" when its log
	// no longer holds it.
	Bootstrap string `json:"bootstrap,omitempty"`
}

// probe is this node's answer to a probe.
func (c *Cluster) probe() *probeInfo {
	term, last := c.raft.CurrentTerm(), c.raft.LastIndex()
	return &probeInfo{NodeID: c.opts.NodeID, ClusterID: c.ident.get(), Leader: c.IsLeader(),
		HasState: term > 0 || last > 0, Term: term, LastIndex: last, Applied: c.AppliedIndex(),
		Bootstrap: c.firstConfiguration()}
}

// firstConfiguration is the configuration at index 1 of this node's log, the one the cluster
// was bootstrapped with (cluster.peers), as "id@addr" sorted and joined by commas: the same on
// every member, bootstrapped or replicated; "" when the log no longer starts there (compacted,
// or caught up from a snapshot). Members bootstrapped with different peers hold different
// entries at the same index and term, which Raft's log matching takes for the same.
func (c *Cluster) firstConfiguration() (first string) {
	var l raft.Log
	if err := c.logDB.GetLog(1, &l); err != nil || l.Type != raft.LogConfiguration {
		return ""
	}
	defer func() {
		if recover() != nil { // raft.DecodeConfiguration panics on what it cannot decode
			first = ""
		}
	}()
	cfg := raft.DecodeConfiguration(l.Data)
	servers := make([]string, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		servers = append(servers, string(s.ID)+"@"+string(s.Address))
	}
	slices.Sort(servers)
	return strings.Join(servers, ",")
}

// ask sends one request to the node at addr on a connection of its own (the forwarder's pool
// is for the leader), and returns its answer: a probe of a joining node, a non-voter's
// progress, a member's cluster id. It ends with ctx, or after 3 s.
func (c *Cluster) ask(ctx context.Context, addr string, req *forwardRequest) (*forwardResponse, error) {
	conn, err := c.mux.dial(streamForward, addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	end := time.Now().Add(3 * time.Second)
	if d := deadline(ctx); d.Before(end) {
		end = d
	}
	_ = conn.SetDeadline(end)
	defer context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })()
	if err := writeFrame(conn, req, nil); err != nil {
		return nil, err
	}
	var resp forwardResponse
	if _, err := readFrame(bufio.NewReader(conn), &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// askProbe probes the node at addr.
func (c *Cluster) askProbe(ctx context.Context, addr string) (*probeInfo, error) {
	resp, err := c.ask(ctx, addr, &forwardRequest{Op: "probe"})
	if err != nil {
		return nil, err
	}
	if resp.Error != "" {
		return nil, errors.New(resp.Error)
	}
	if resp.Probe == nil {
		return nil, errors.New("no probe in the answer")
	}
	return resp.Probe, nil
}

// probeJoiner checks that a node of this cluster's secret (and mutual TLS, when set) answers at
// addr, and that it does not lead a cluster of its own; it returns what the node said.
func (c *Cluster) probeJoiner(ctx context.Context, id, addr string) (*probeInfo, error) {
	info, err := c.askProbe(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %s at %s: %v (start it first, with this cluster's cluster.secret)", ErrJoinerUnreachable, id, addr, err)
	}
	if info.Leader {
		return nil, fmt.Errorf("%w: %s at %s leads a cluster of its own (cluster id %s; this is cluster %s): stop it, empty its data_dir, and start it with cluster.bootstrap false (or cluster.join)",
			ErrJoinerLeads, id, addr, orNone(info.ClusterID), orNone(c.ident.get()))
	}
	return info, nil
}

// checkJoinerIdentity refuses a joining node whose data_dir belongs to another cluster: one
// that records another cluster id, or holds a Raft log without an id while it is not a member
// (a log this cluster did not write: its higher term or longer log could win an election here
// and overwrite entries this cluster committed). A member's log without an id is this
// cluster's, from before it had one (a member that moved to a new address).
func (c *Cluster) checkJoinerIdentity(id, addr string, info *probeInfo, member bool) error {
	mine := c.ident.get()
	switch {
	case info.ClusterID != "" && info.ClusterID == mine:
		return nil
	case info.ClusterID != "":
		return fmt.Errorf("%w: %s at %s holds the data of cluster %s, and this is cluster %s: stop it, empty its data_dir, and start it again with cluster.join (or cluster.bootstrap false) to join it here",
			ErrJoinerForeign, id, addr, info.ClusterID, orNone(mine))
	case info.HasState && !member:
		return fmt.Errorf("%w: %s at %s holds a Raft log (term %d, last index %d) without a cluster id, which this cluster (cluster id %s) did not write: stop it, empty its data_dir, and start it again with cluster.join (or cluster.bootstrap false) to join it here",
			ErrJoinerForeign, id, addr, info.Term, info.LastIndex, orNone(mine))
	}
	return nil
}

func orNone(id string) string {
	if id == "" {
		return "none yet"
	}
	return id
}

// tellClusterID has the joining node at addr record this cluster's id.
func (c *Cluster) tellClusterID(ctx context.Context, id, addr, clusterID string) error {
	resp, err := c.ask(ctx, addr, &forwardRequest{Op: "adopt_cluster_id", ClusterID: clusterID})
	if err != nil {
		return fmt.Errorf("%w: %s at %s: %v", ErrJoinerUnreachable, id, addr, err)
	}
	if resp.Error != "" {
		return fmt.Errorf("%w: %s at %s: %s: stop it, empty its data_dir, and start it again with cluster.join (or cluster.bootstrap false) to join it here",
			ErrJoinerForeign, id, addr, resp.Error)
	}
	return nil
}

// nonvoterCaughtUp reports whether a node that answered info has caught up with this leader's log:
// it heard from this leader (its term) and its log ends at most joinMaxLag entries before the
// leader's.
func (c *Cluster) nonvoterCaughtUp(info *probeInfo) bool {
	return info.Term == c.raft.CurrentTerm() && info.LastIndex+joinMaxLag >= c.raft.LastIndex()
}

// promoteIfCaughtUp makes the non-voter id at addr a voter if it has caught up. It reports
// whether id is a voter now, and what it last answered (nil: it did not answer). An error
// means it cannot be promoted by waiting: it was removed, or moved, or this node no longer
// leads.
func (c *Cluster) promoteIfCaughtUp(ctx context.Context, id, addr string) (bool, *probeInfo, error) {
	cfg := c.raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		return false, nil, fmt.Errorf("consensus: read configuration: %w", err)
	}
	i := slices.IndexFunc(cfg.Configuration().Servers, func(s raft.Server) bool { return s.ID == raft.ServerID(id) })
	if i < 0 {
		return false, nil, fmt.Errorf("%w: %s was removed while it caught up", ErrNotMember, id)
	}
	s := cfg.Configuration().Servers[i]
	if s.Address != raft.ServerAddress(addr) {
		return false, nil, fmt.Errorf("%w: %s moved to %s while it caught up", ErrRaftAddrConflict, id, s.Address)
	}
	if s.Suffrage == raft.Voter {
		return true, nil, nil
	}
	info, err := c.askProbe(ctx, addr)
	if err != nil || !c.nonvoterCaughtUp(info) {
		return false, info, nil
	}
	// prevIndex: only the configuration looked at, so a node removed meanwhile is not added back.
	if err := c.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), cfg.Index(), 0).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
			return false, info, fmt.Errorf("consensus: promote %s: %w", id, err)
		}
		return false, info, nil // the configuration changed meanwhile: look again
	}
	c.log.Info("non-voter caught up and promoted to voter", "node_id", id, "raft_addr", addr,
		"its_last_index", info.LastIndex, "leader_last_index", c.raft.LastIndex())
	return true, info, nil
}

// promoteWhenCaughtUp waits for the non-voter id at addr to catch up and makes it a voter, for
// at most joinCatchUpWait and within ctx. When the wait ends first it answers
// ErrJoinerCatchingUp, and leaves the node a non-voter: the leader's membership loop promotes
// it once it has caught up, and a join repeated waits again.
func (c *Cluster) promoteWhenCaughtUp(ctx context.Context, id, addr string) error {
	wait := c.opts.joinCatchUp
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d)-500*time.Millisecond)
	}
	start := time.Now()
	end := start.Add(wait)
	var last *probeInfo
	for {
		promoted, info, err := c.promoteIfCaughtUp(ctx, id, addr)
		if err != nil || promoted {
			return err
		}
		if info != nil {
			last = info
		}
		if !time.Now().Before(end) {
			progress := "it has not answered since it was added"
			if last != nil {
				progress = fmt.Sprintf("its log is at index %d (term %d), the leader's at %d (term %d)",
					last.LastIndex, last.Term, c.raft.LastIndex(), c.raft.CurrentTerm())
			}
			return fmt.Errorf("%w: %s at %s is a non-voter after %s: %s. It counts toward no quorum; the leader makes it a voter once it has caught up (parley cluster status shows it as Voter then): join it again to wait for that, or remove it (parley cluster remove --node-id %s)",
				ErrJoinerCatchingUp, id, addr, time.Since(start).Round(time.Millisecond), progress, id)
		}
		select {
		case <-ctx.Done():
			end = time.Now() // one more look, then the answer
		case <-c.stop:
			return ErrUnavailable
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// promoteNonvoters is the leader's turn of the membership loop: it promotes every non-voter
// that has caught up. A non-voter is always a node on its way to being a voter (Parley adds no
// other kind): one whose join ended before it caught up, or whose leader changed meanwhile.
func (c *Cluster) promoteNonvoters(ctx context.Context) {
	cfg := c.raft.GetConfiguration()
	if cfg.Error() != nil {
		return
	}
	for _, s := range cfg.Configuration().Servers {
		if s.Suffrage != raft.Nonvoter || ctx.Err() != nil {
			continue
		}
		if _, _, err := c.promoteIfCaughtUp(ctx, string(s.ID), string(s.Address)); err != nil {
			c.log.Debug("promote non-voter", "node_id", s.ID, "err", err)
		}
	}
}

// membershipLoop runs on every node: until the node knows its cluster id, it learns it (from
// the leader), or as leader finds or mints it; and the leader promotes the non-voters that have
// caught up.
func (c *Cluster) membershipLoop() {
	defer c.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTicker(c.opts.membershipInterval)
	defer t.Stop()
	var nextCensus time.Time
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if !c.opts.withoutClusterID && c.ident.get() == "" && time.Now().After(nextCensus) {
			if !c.learnClusterID(ctx) {
				nextCensus = time.Now().Add(2 * time.Second)
			}
		}
		if c.IsLeader() {
			c.promoteNonvoters(ctx)
		}
	}
}

// ClusterID is the id of the cluster this node belongs to ("" until it knows it).
func (c *Cluster) ClusterID() string { return c.ident.get() }

func (c *Cluster) removeLocal(id string) error {
	cfg := c.raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		return fmt.Errorf("consensus: read configuration: %w", err)
	}
	servers := cfg.Configuration().Servers
	i := slices.IndexFunc(servers, func(s raft.Server) bool { return s.ID == raft.ServerID(id) })
	if i < 0 {
		// raft would commit the unchanged configuration and answer success.
		return fmt.Errorf("%w: %s", ErrNotMember, id)
	}
	isVoter := func(s raft.Server) bool { return s.Suffrage == raft.Voter }
	if isVoter(servers[i]) && !slices.ContainsFunc(slices.Delete(slices.Clone(servers), i, i+1), isVoter) {
		// raft refuses it too ("need at least one voter"), as an error that looked like an
		// outage (503): this one no retry changes.
		return fmt.Errorf("%w: %s is the only voter", ErrLastVoter, id)
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
	// ClusterID is the cluster's identity, as this node recorded it (absent until it knows it).
	ClusterID string `json:"cluster_id,omitempty"`
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
		Term: stats["term"], AppliedIndex: c.AppliedIndex(), CommitIndex: stats["commit_index"], LastIndex: stats["last_log_index"],
		ClusterID: c.ident.get()}
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

// The cluster id. A Raft log carries no identity of its own: a data_dir left from another
// cluster (a higher term, a longer log) joined to this one could win an election and overwrite
// what this cluster committed, and Raft's log matching may take its entries for this cluster's.
// So every cluster has an id, 16 random bytes in hex (like etcd's cluster ID and LiteFS's),
// that its first leader mints once and commits to the log, and that every member records in
// data_dir/raft/cluster-id:
//
//   - The leader of a cluster without an id mints one, once every member has answered that it
//     has none (a member that has one gives it instead) and after a barrier, so that an id
//     committed under an earlier leader is found, not minted twice. The entry is a command with
//     an empty batch that carries the id in the log entry's Extensions; identityFSM takes it
//     out before the state sees it, and the first one committed is the cluster's.
//   - A joining node is told the id before it is added (after the checks below), so it never
//     takes this cluster's log without it. A member that missed the entry (it caught up from
//     a snapshot) asks the leader.
//   - The leader refuses to add a node that records another id, or that holds a Raft log
//     without one while not a member (ErrJoinerForeign), and a node refuses to record an id
//     other than its own. A node whose data_dir names a cluster but holds no Raft log refuses
//     to bootstrap a new one (Open).
//
// A cluster created before ids gets one the same way, from its first leader that finds every
// member answering.
const (
	clusterIDFile = "cluster-id"
	// clusterIDTag starts the Extensions of the log entry that carries the cluster id.
	clusterIDTag = "parley-cluster-id:"
)

// clusterIdentity is this node's record of its cluster id.
type clusterIdentity struct {
	path     string
	log      *slog.Logger
	disabled bool // Options.withoutClusterID: a build from before cluster ids
	mu       sync.Mutex
	id       atomic.Pointer[string]
}

// openClusterIdentity reads the id recorded in raftDir, if any.
func openClusterIdentity(raftDir string, log *slog.Logger, disabled bool) (*clusterIdentity, error) {
	ci := &clusterIdentity{path: filepath.Join(raftDir, clusterIDFile), log: log, disabled: disabled}
	if disabled {
		return ci, nil
	}
	b, err := os.ReadFile(ci.path)
	if errors.Is(err, os.ErrNotExist) {
		return ci, nil
	}
	if err != nil {
		return nil, fmt.Errorf("consensus: read the cluster id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if !validClusterID(id) {
		return nil, fmt.Errorf("consensus: %s holds %s, not a cluster id (32 hex digits): put back the file from a backup of this node (or from another member: they all hold the same), or empty the data_dir and join the node again",
			ci.path, strconv.QuoteToASCII(string(b[:min(len(b), 64)])))
	}
	ci.id.Store(&id)
	return ci, nil
}

// get is the recorded id, "" when there is none.
func (ci *clusterIdentity) get() string {
	if p := ci.id.Load(); p != nil {
		return *p
	}
	return ""
}

// record makes id this node's cluster id, on disk (synced) before it is used, unless the node
// has one: it keeps that one, and answers an error naming both when they differ. how says where
// the id came from, for the log.
func (ci *clusterIdentity) record(id, how string) error {
	if !validClusterID(id) {
		return fmt.Errorf("consensus: %q is not a cluster id", id)
	}
	ci.mu.Lock()
	defer ci.mu.Unlock()
	if cur := ci.get(); cur != "" {
		if cur == id {
			return nil
		}
		return fmt.Errorf("this node's data_dir belongs to cluster %s, not %s", cur, id)
	}
	if ci.disabled {
		return nil
	}
	if err := writeFileSynced(ci.path, []byte(id+"\n")); err != nil {
		return fmt.Errorf("consensus: record the cluster id: %w", err)
	}
	ci.id.Store(&id)
	ci.log.Info("cluster id recorded", "cluster_id", id, "how", how)
	return nil
}

func validClusterID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

func newClusterID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// writeFileSynced writes a file whole or not at all: a temporary file, synced, renamed into
// place, and the directory synced.
func writeFileSynced(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// clusterIDOf is the cluster id a log entry carries, if it is the entry that mints one.
func clusterIDOf(l *raft.Log) (string, bool) {
	if l.Type != raft.LogCommand || !bytes.HasPrefix(l.Extensions, []byte(clusterIDTag)) {
		return "", false
	}
	return string(l.Extensions[len(clusterIDTag):]), true
}

// identityFSM is the state's FSM with the entries that carry the cluster id taken out: it
// records the id, and hands the state a no-op in their place.
type identityFSM struct {
	*fsm
	c *Cluster
}

var _ raft.BatchingFSM = identityFSM{}

func (f identityFSM) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

func (f identityFSM) ApplyBatch(logs []*raft.Log) []any {
	cloned := false
	for i, l := range logs {
		id, ok := clusterIDOf(l)
		if !ok {
			continue
		}
		f.c.clusterIDCommitted(id, l.Index)
		if !cloned {
			logs, cloned = slices.Clone(logs), true
		}
		noop := *l
		noop.Type = raft.LogNoop
		logs[i] = &noop
	}
	return f.fsm.ApplyBatch(logs)
}

// clusterIDCommitted records the id of the entry at index, applied on this node: the first
// one committed is the cluster's (a leader mints only when it finds none, so a second one is
// rare: two leaders in a row minting before the first one's entry was applied).
func (c *Cluster) clusterIDCommitted(id string, index uint64) {
	if c.opts.withoutClusterID {
		return
	}
	cur := c.ident.get()
	if cur == "" {
		if err := c.ident.record(id, fmt.Sprintf("committed at index %d", index)); err != nil {
			c.log.Error("cluster id not recorded", "cluster_id", id, "index", index, "err", err)
		}
		return
	}
	if cur != id {
		c.log.Warn("a later cluster id entry ignored: the first one committed is the cluster's",
			"cluster_id", cur, "ignored", id, "index", index)
	}
}

// adoptClusterID is a joining node's side of tellClusterID: it records the id the leader of
// the cluster it is joined to gave, or refuses one that is not its own.
func (c *Cluster) adoptClusterID(id string) error {
	if c.IsLeader() {
		return fmt.Errorf("this node leads a cluster of its own (cluster id %s)", orNone(c.ident.get()))
	}
	return c.ident.record(id, "given by the leader that is adding this node")
}

// learnClusterID is the membership loop's turn for a node that does not know its cluster id:
// a follower asks the leader, the leader finds or mints it. It reports false when that could
// not be done now and is worth trying again only in a while.
func (c *Cluster) learnClusterID(ctx context.Context) bool {
	if c.IsLeader() {
		return c.findOrMintClusterID(ctx)
	}
	_, addr := c.Leader()
	if addr == "" {
		return true // no leader yet: look again at the next turn
	}
	info, err := c.askProbe(ctx, addr)
	if err != nil || info.ClusterID == "" {
		return false // the leader does not know it yet either
	}
	if err := c.ident.record(info.ClusterID, "learned from "+info.NodeID); err != nil {
		c.log.Error("cluster id not recorded", "cluster_id", info.ClusterID, "err", err)
	}
	return true
}

// findOrMintClusterID is learnClusterID on the leader: it takes the id a member has recorded,
// or, when every member answers that it has none, mints one.
func (c *Cluster) findOrMintClusterID(ctx context.Context) bool {
	cfg := c.raft.GetConfiguration()
	if cfg.Error() != nil {
		return false
	}
	found, from := "", ""
	unanswered := false
	bootstrap := c.firstConfiguration()
	for _, s := range cfg.Configuration().Servers {
		if s.ID == raft.ServerID(c.opts.NodeID) {
			continue
		}
		info, err := c.askProbe(ctx, string(s.Address))
		if err == nil && bootstrap != "" && info.Bootstrap != "" && info.Bootstrap != bootstrap {
			// Bootstrapped with other cluster.peers (a cluster of its own, maybe, with an id of
			// its own): its id is not this cluster's, and no id is minted while it is a member
			// that disagrees, or the two would pass for one cluster.
			if time.Since(c.peersWarned) > 30*time.Second {
				c.peersWarned = time.Now()
				c.log.Error("a member was bootstrapped with other cluster.peers than this node: cluster.peers must be the same on every initial voter. Stop it, empty its data_dir, and start it with the same cluster.peers (or cluster.join); no cluster id is minted meanwhile",
					"member", s.ID, "its_peers", info.Bootstrap, "peers_here", bootstrap, "its_cluster_id", orNone(info.ClusterID))
			}
			unanswered = true
			continue
		}
		if err != nil {
			// It may hold the id, committed before this node caught up from a snapshot: no
			// id is minted without it, but another member's is taken all the same.
			if time.Since(c.mintWarned) > 30*time.Second {
				c.mintWarned = time.Now()
				c.log.Warn("the cluster id is not known here yet, and every member must answer before one is minted",
					"waiting_for", s.ID, "raft_addr", s.Address, "err", err)
			}
			unanswered = true
			continue
		}
		if info.ClusterID == "" {
			continue
		}
		if found != "" && found != info.ClusterID {
			c.log.Error("members record different cluster ids: none minted", "cluster_id", found, "recorded_by", from,
				"other_cluster_id", info.ClusterID, "other_recorded_by", info.NodeID)
			return false
		}
		found, from = info.ClusterID, info.NodeID
	}
	if found != "" {
		if err := c.ident.record(found, "learned from "+from); err != nil {
			c.log.Error("cluster id not recorded", "cluster_id", found, "err", err)
		}
		return true
	}
	if unanswered {
		return false
	}
	// Everything in this leader's log applied first: an id committed under an earlier leader
	// is then recorded here, and none is minted.
	if err := c.raft.Barrier(time.Second).Error(); err != nil || c.ident.get() != "" {
		return err == nil
	}
	batch, err := state.EncodeBatch(nil)
	if err != nil {
		return false
	}
	id := newClusterID()
	f := c.raft.ApplyLog(raft.Log{Data: batch, Extensions: []byte(clusterIDTag + id)}, time.Second)
	if err := f.Error(); err != nil {
		return false
	}
	// As for any entry the state machine applied (propose.go): the followers hear of its
	// commit at once, or a read index naming it waits for the commit timeout on them.
	c.nudgeFollowers(f.Index())
	c.log.Info("cluster id minted", "cluster_id", c.ident.get()) // as applied: the first id committed
	return true
}
