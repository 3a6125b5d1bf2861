// Package consensus replicates the org's state with hashicorp/raft: durable log and stable
// stores on disk, file snapshots of the state database, cluster formation and membership,
// batched proposals (many commands share one log entry), and forwarding of writes from
// followers to the leader over the authenticated cluster channel.
package consensus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/parley-chat/parley/consensus/state"
)

// ErrUnavailable means no leader could be reached in time: the write may or may not have
// been committed, and the client retries idempotently.
var ErrUnavailable = errors.New("consensus: no quorum reachable")

// Peer is an initial voter.
type Peer struct {
	ID       string
	RaftAddr string
}

// Options configure a Cluster.
type Options struct {
	NodeID    string
	DataDir   string
	RaftBind  string // listen address for Raft and forwarding
	Advertise string // address peers dial; RaftBind when empty
	Secret    string
	Bootstrap bool
	Peers     []Peer // initial voters when bootstrapping; empty: this node alone

	ServerTLS, ClientTLS *tls.Config // mutual TLS between nodes when set

	// Raft tuning; zero values take the defaults below.
	HeartbeatTimeout  time.Duration
	ElectionTimeout   time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	ApplyTimeout      time.Duration
	// CommitTimeout is how long the leader waits with nothing to send before it tells the
	// followers the commit index anyway (raft.Config.CommitTimeout; see nudge.go for how they
	// hear of a commit sooner).
	CommitTimeout      time.Duration
	MaxBatchCommands   int
	MaxInflightBatches int
	// BatchLinger is how long a batch waits for more proposals while another batch is in
	// flight (never on an idle node): under load, fewer and bigger log entries. Negative: no
	// waiting.
	BatchLinger time.Duration

	Logger *slog.Logger
	// Observer receives every applied change, in log order, on the FSM goroutine.
	Observer func(*state.Applied)
	// OnBatch reports log entries and commands per FSM batch (metrics).
	OnBatch func(entries, commands int)
	// OnEphemeral receives signals other members sent with Broadcast.
	OnEphemeral func(msg []byte)
	// OnCommit reports, for each proposal batch, the seconds from proposing it to this node
	// having applied it, and how many of those it waited after the leader's answer for this
	// node's own apply (read-your-writes: about zero on the leader) (metrics).
	OnCommit func(seconds, applyWaitSeconds float64, commands int)
	// OnLogStore reports the seconds each write of entries to this node's Raft log took, its
	// fsync included: the disk's share of every commit, on the leader and the followers alike
	// (metrics).
	OnLogStore func(seconds float64, entries int)

	// nudgeDelay and quietGap are the constants of the same names; tests stretch them.
	nudgeDelay, quietGap time.Duration
	// leaderCheckInterval is the constant of the same name; tests stretch it.
	leaderCheckInterval time.Duration
	// walSegmentSize is the Raft log's segment size (0: raft-wal's 64 MiB); tests shrink it so
	// that compaction, which deletes whole segments, happens within a few hundred entries.
	walSegmentSize int
	// joinCatchUp and membershipInterval are joinCatchUpWait and membershipInterval
	// (membership.go); tests shorten them.
	joinCatchUp, membershipInterval time.Duration
	// withoutClusterID makes the node a build from before cluster ids: it neither mints nor
	// records one (tests of the upgrade).
	withoutClusterID bool
}

func (o *Options) defaults() {
	if o.HeartbeatTimeout == 0 {
		o.HeartbeatTimeout = 500 * time.Millisecond
	}
	if o.ElectionTimeout == 0 {
		o.ElectionTimeout = 500 * time.Millisecond
	}
	if o.SnapshotThreshold == 0 {
		o.SnapshotThreshold = 8192
	}
	if o.TrailingLogs == 0 {
		o.TrailingLogs = 10240
	}
	if o.ApplyTimeout == 0 {
		o.ApplyTimeout = 5 * time.Second
	}
	if o.CommitTimeout == 0 {
		// Raft's own default. The leader's nudges (nudge.go) tell followers of the commits
		// that someone waits for; this timeout only paces the empty appends an idle leader
		// sends, which at 5 ms kept an idle 3-node cluster at 16-20% of a core (4% at 50 ms).
		o.CommitTimeout = 50 * time.Millisecond
	}
	if o.MaxBatchCommands == 0 {
		o.MaxBatchCommands = 512
	}
	if o.MaxInflightBatches == 0 {
		o.MaxInflightBatches = 2
	}
	if o.BatchLinger == 0 {
		o.BatchLinger = defaultBatchLinger
	}
	if o.nudgeDelay == 0 {
		o.nudgeDelay = nudgeDelay
	}
	if o.quietGap == 0 {
		o.quietGap = quietGap
	}
	if o.leaderCheckInterval == 0 {
		o.leaderCheckInterval = leaderCheckInterval
	}
	if o.joinCatchUp == 0 {
		o.joinCatchUp = joinCatchUpWait
	}
	if o.membershipInterval == 0 {
		o.membershipInterval = membershipInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Advertise == "" {
		o.Advertise = o.RaftBind
	}
}

// Cluster is this node's member of the org's Raft cluster and its copy of the state.
type Cluster struct {
	opts    Options
	log     *slog.Logger
	raft    *raft.Raft
	store   *state.Store
	logDB   *logStore
	mux     *mux
	fsm     *fsm
	ident   *clusterIdentity // this node's record of its cluster id (membership.go)
	applied *indexWaiter
	fwd     *forwarder
	// transport is Raft's; Close closes its replication pipelines (raftpipeline.go).
	transport *pipelineTransport

	ephemeralState

	proposals chan *proposal
	inflight  chan struct{}
	nudge     chan struct{} // nudgeLoop's requests (nudge.go)
	// nudgeIndex is the log's last index when a nudge was last asked for (nudge.go).
	nudgeIndex atomic.Uint64
	// nudgeAsked is when (Unix ns) a nudge was last asked for; nudgeQuiet whether it came
	// quietGap or more after the one before (nudge.go).
	nudgeAsked atomic.Int64
	nudgeQuiet atomic.Bool
	stop       chan struct{}
	wg         sync.WaitGroup
	closeOnce  sync.Once
	closing    atomic.Bool // set once Close, or a failed Open, starts stopping (newTransportLogger)
	// raftCalls counts the calls waiting on a Barrier or an Apply: hashicorp/raft (v1.7.3)
	// answers one queued on its apply channel only while it runs, and leaves the queue
	// unanswered at Shutdown, so Close lets those under way finish first and refuses later
	// ones (raftCallsEnded) instead of leaving them, and itself, waiting for good.
	raftCalls      sync.WaitGroup
	raftCallsMu    sync.RWMutex
	raftCallsEnded bool
	// caughtUp is set once this node has applied everything committed when it started (a
	// CaughtUp that succeeded): until then its state is its snapshot's, or partly replayed.
	caughtUp   atomic.Bool
	startedUp  chan struct{} // closed when caughtUp is first set
	markCaught sync.Once
	// mintWarned is when the membership loop last logged that it cannot mint the cluster id
	// yet (only that loop reads or writes it).
	mintWarned time.Time
	// peersWarned is when it last logged that members were bootstrapped with other peers.
	peersWarned time.Time
}

// Open starts the node's Raft member: it opens the stores, starts the cluster listener, and
// bootstraps a new cluster on first start when asked to (never in a data_dir that names a
// cluster but holds no Raft log: membership.go, the cluster id).
func Open(opts Options) (*Cluster, error) {
	opts.defaults()
	if opts.Secret == "" && len(opts.Peers) > 1 {
		// Without a secret this node refuses every cluster connection (mux.go): it can only
		// be a cluster of one.
		return nil, errors.New("consensus: a cluster of more than one node needs a secret")
	}
	raftDir := filepath.Join(opts.DataDir, "raft")
	if err := os.MkdirAll(raftDir, 0o750); err != nil {
		return nil, fmt.Errorf("consensus: data dir: %w", err)
	}
	// The state is rebuilt in memory from the snapshot and the log at every start (see
	// state.Open). Builds before December 2026 kept a copy in state.db: it is stale, remove it.
	if err := os.Remove(filepath.Join(opts.DataDir, "state.db")); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("consensus: remove old state cache: %w", err)
	}
	store := state.Open()
	c := &Cluster{opts: opts, log: opts.Logger, store: store,
		proposals: make(chan *proposal, 4096), inflight: make(chan struct{}, opts.MaxInflightBatches),
		nudge: make(chan struct{}, 1), stop: make(chan struct{}), startedUp: make(chan struct{})}
	c.ephSenders = make(map[string]*ephemeralSender)
	if err := c.start(raftDir); err != nil {
		c.closeResources()
		return nil, err
	}
	c.wg.Add(4)
	go c.batchLoop()
	go c.nudgeLoop()
	go c.catchUpAtStart()
	go c.membershipLoop()
	return c, nil
}

// catchUpAtStart waits until this node has applied the log it started with. hashicorp/raft
// restores the snapshot at start but applies the entries after it only once it learns the
// commit index (from its leader, or as leader by committing), so a node that answered at once
// would serve a state that is seconds old; Healthy says no until then.
func (c *Cluster) catchUpAtStart() {
	defer c.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { // a forwarded read index watches ctx, not c.stop (forwarder.call)
		defer close(stopped)
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := c.caughtUpAsLeaderOrFollower(ctx)
	cancel()
	<-stopped
	if err == nil {
		c.log.Info("caught up with the log it started with", "applied_index", c.AppliedIndex())
	}
}

func (c *Cluster) start(raftDir string) (err error) {
	opts := c.opts
	logDB, err := openLogStore(raftDir, c.log, opts.walSegmentSize)
	if err != nil {
		return err
	}
	logDB.onStore = opts.OnLogStore
	c.logDB = logDB
	snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, 2, newRaftLogger(c.log, "raft-snapshots"))
	if err != nil {
		return fmt.Errorf("consensus: snapshot store: %w", err)
	}
	ln, err := net.Listen("tcp", opts.RaftBind)
	if err != nil {
		return fmt.Errorf("consensus: listen %s: %w", opts.RaftBind, err)
	}
	c.mux = newMux(ln, opts.NodeID, opts.Secret, opts.ServerTLS, opts.ClientTLS, c.log)
	adv, err := net.ResolveTCPAddr("tcp", opts.Advertise)
	if err != nil {
		return fmt.Errorf("consensus: advertise address %q: %w", opts.Advertise, err)
	}
	c.mux.advertise = adv
	transport := newPipelineTransport(raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: c.mux.streams[streamRaft], MaxPool: 3, Timeout: 10 * time.Second,
		Logger: newTransportLogger(c.log, &c.closing),
	})) // raftpipeline.go: raft's pipelined appends could wait forever
	c.transport = transport
	// A start that fails from here on stops what it started, as Close would: Raft's goroutines
	// (its Shutdown waits for them and closes the transport), or the transport's accept loop
	// while Raft does not own it yet. Closing the mux alone leaves that loop retrying forever.
	defer func() {
		if err == nil {
			return
		}
		c.closing.Store(true)
		if c.raft != nil {
			_ = c.raft.Shutdown().Error() // always nil
		} else {
			_ = transport.Close() // always nil
		}
	}()

	c.applied = newIndexWaiter(c.store.AppliedIndex())
	c.fsm = &fsm{store: c.store, log: c.log, observer: opts.Observer, applied: c.applied, onBatch: opts.OnBatch}
	held, err := logDB.LastIndex()
	if err != nil {
		return fmt.Errorf("consensus: read the raft log's last index: %w", err)
	}
	c.fsm.heldAtStart.Store(held)
	logDB.heldAtStart = &c.fsm.heldAtStart

	cfg := raft.DefaultConfig()
	cfg.LocalID = raft.ServerID(opts.NodeID)
	cfg.HeartbeatTimeout = opts.HeartbeatTimeout
	cfg.ElectionTimeout = opts.ElectionTimeout
	cfg.LeaderLeaseTimeout = opts.HeartbeatTimeout
	cfg.CommitTimeout = opts.CommitTimeout
	cfg.SnapshotThreshold = opts.SnapshotThreshold
	cfg.TrailingLogs = opts.TrailingLogs
	// raft's default (64). raft allocates a slice of this many slots for every append the leader
	// sends and for every run of commits a node applies, however few entries they hold; ours are
	// batches of up to MaxBatchCommands commands, so an append rarely carries more than a few.
	// 512 cost the leader 13% more allocated bytes per event in the one-at-a-time cluster row
	// (docs/performance.md).
	cfg.MaxAppendEntries = 64
	cfg.BatchApplyCh = true
	// Only Close shuts Raft down. With raft's default, a leader that removes itself shuts its
	// Raft down on its own; Close's Shutdown then returns at once, without waiting for Raft's
	// goroutines (its FSM could still be applying while Close closes the store) and without
	// closing the transport (its accept loop ran on forever). A removed leader now steps down
	// to follower, as a removed follower already does; it starts no election outside the
	// membership, and Close stops it like any other node.
	cfg.ShutdownOnRemove = false
	cfg.Logger = newRaftLogger(c.log, "raft")

	hasState, err := raft.HasExistingState(logDB, logDB, snaps)
	if err != nil {
		return fmt.Errorf("consensus: inspect raft state: %w", err)
	}
	if c.ident, err = openClusterIdentity(raftDir, c.log, opts.withoutClusterID); err != nil {
		return err
	}
	if id := c.ident.get(); id != "" && !hasState && opts.Bootstrap {
		// The id stays with the data: a node that bootstrapped here would form a new cluster
		// under this one's id, and could then be joined to it (membership.go).
		return fmt.Errorf("consensus: %s names cluster %s, but the data_dir holds no Raft log (it was emptied only in part): empty the whole data_dir to form a new cluster, or start with cluster.bootstrap false (or cluster.join) to be joined to cluster %s",
			c.ident.path, id, id)
	}
	// Replication reads back every entry it sends (and the one before, for its term); served
	// from bbolt that is a read and a msgpack decode of each batch, once per follower. Followers
	// in step need only the newest few entries; the bound keeps big batches from pinning memory.
	logs, err := raft.NewLogCache(64, logDB)
	if err != nil {
		return fmt.Errorf("consensus: log cache: %w", err)
	}
	bootstrap := opts.Bootstrap && !hasState
	// A voter back on an empty data_dir (not removed first) must not vote before a leader has
	// caught it up: it would lose entries it had acknowledged (voteguard.go).
	var votes *voteGuard
	if !hasState && !bootstrap {
		votes = transport.guardVotes(cfg.LocalID, raft.ServerAddress(opts.Advertise), c.log)
	}
	// Each connection names the member it is for; the node at the address refuses it unless it
	// is that member (rafttarget.go).
	r, err := raft.NewRaft(cfg, identityFSM{fsm: c.fsm, c: c}, logs, logDB, snaps, raftTargetTransport{transport})
	if err != nil {
		return fmt.Errorf("consensus: start raft: %w", err)
	}
	c.raft = r
	if votes != nil {
		votes.raft.Store(r)
	}
	c.fwd = newForwarder(c)
	if bootstrap {
		servers := []raft.Server{{ID: cfg.LocalID, Address: raft.ServerAddress(opts.Advertise)}}
		if len(opts.Peers) > 0 {
			servers = servers[:0]
			for _, p := range opts.Peers {
				servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)})
			}
		}
		if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("consensus: bootstrap: %w", err)
		}
		c.log.Info("raft cluster bootstrapped", "voters", len(servers))
	}
	return nil
}

// Store is this node's applied state, for reads.
func (c *Cluster) Store() *state.Store { return c.store }

// NodeID is this node's id.
func (c *Cluster) NodeID() string { return c.opts.NodeID }

// IsLeader reports whether this node leads the cluster now.
func (c *Cluster) IsLeader() bool { return c.raft.State() == raft.Leader }

// Leader returns the leader's node id and Raft address ("" when there is none).
func (c *Cluster) Leader() (id, addr string) {
	a, i := c.raft.LeaderWithID()
	return string(i), string(a)
}

// Healthy reports whether this node is in contact with a quorum (it leads, or it follows a
// leader it has heard from recently) and has applied the log it started with.
func (c *Cluster) Healthy() bool {
	if !c.caughtUp.Load() {
		return false
	}
	return c.inContact()
}

// caughtUpAsLeaderOrFollower is CaughtUp with a leader's index taken from its log rather than
// a barrier: a barrier's future waits for all the log before it to be applied (a whole replay,
// after a restart) and not for ctx or Close, which would then wait for the replay too.
func (c *Cluster) caughtUpAsLeaderOrFollower(ctx context.Context) error {
	return c.catchUp(ctx, func(context.Context) (uint64, error) { return c.lastAppliedEntry(c.raft.LastIndex()), nil })
}

// lastAppliedEntry is the index of the last entry at or before index that the state machine
// applies (commands and configurations: Raft keeps no-ops and barriers from it, so the applied
// index never reaches one at the end of the log), or the snapshot's when the log before index
// holds none. A leader's log holds every committed entry, and its no-op of the term, at the
// end, commits them all.
func (c *Cluster) lastAppliedEntry(index uint64) uint64 {
	for i := index; i > 0; i-- {
		var l raft.Log
		if err := c.logDB.GetLog(i, &l); err != nil {
			break // compacted: the snapshot holds the rest
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return i
		}
	}
	return c.store.AppliedIndex()
}

// WaitStartedUp waits until this node has applied the log it started with (at once after
// that), or ctx ends: the one catch-up every request waits for after a restart, rather than a
// read index of its own each.
func (c *Cluster) WaitStartedUp(ctx context.Context) error {
	select {
	case <-c.startedUp:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("consensus: catching up with the log: %w", ErrUnavailable)
	case <-c.stop:
		return ErrUnavailable
	}
}

// CatchingUp reports whether this node is in contact with a quorum but still applying the log
// it started with.
func (c *Cluster) CatchingUp() bool { return !c.caughtUp.Load() && c.inContact() }

func (c *Cluster) inContact() bool {
	switch c.raft.State() {
	case raft.Leader:
		return true
	case raft.Follower:
		id, _ := c.Leader()
		if id == "" {
			return false
		}
		last := c.raft.LastContact()
		return !last.IsZero() && time.Since(last) < 3*c.opts.HeartbeatTimeout
	}
	return false
}

// WaitApplied blocks until this node has applied index (read-your-writes) or ctx ends.
func (c *Cluster) WaitApplied(ctx context.Context, index uint64) error {
	for {
		cur, changed := c.applied.current()
		if cur >= index {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("consensus: wait for index %d (at %d): %w", index, cur, ErrUnavailable)
		case <-c.stop:
			return ErrUnavailable
		}
	}
}

// AppliedIndex is the last index this node applied.
func (c *Cluster) AppliedIndex() uint64 {
	idx, _ := c.applied.current()
	return idx
}

// Snapshot forces a snapshot now (tests, operators before a backup).
func (c *Cluster) Snapshot() error {
	if err := c.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("consensus: snapshot: %w", err)
	}
	return nil
}

// Close stops accepting proposals, waits for those in flight, and shuts Raft down.
func (c *Cluster) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.closing.Store(true)
		close(c.stop)
		c.wg.Wait()
		c.raftCallsMu.Lock()
		c.raftCallsEnded = true
		c.raftCallsMu.Unlock()
		c.raftCalls.Wait() // Raft still runs: each is answered (committed, or not the leader)
		if c.raft != nil {
			shutdown := c.raft.Shutdown()
			c.transport.closePipelines() // a stuck append would keep Shutdown waiting forever
			if e := shutdown.Error(); e != nil {
				err = fmt.Errorf("consensus: shutdown raft: %w", e)
			}
		}
		c.closeResources()
	})
	return err
}

func (c *Cluster) closeResources() {
	if c.fwd != nil {
		c.fwd.close()
	}
	if c.mux != nil {
		c.mux.close()
	}
	if c.fwd != nil {
		c.fwd.wait()
	}
	if c.logDB != nil {
		c.logDB.Close()
	}
	c.store.Close()
}

// CaughtUp waits until this node has applied everything the leader had committed when it
// was called (a read index): a token or room created a moment ago through another node, or
// before a failover this node is still catching up on, is then visible here.
func (c *Cluster) CaughtUp(ctx context.Context) error {
	return c.catchUp(ctx, c.readIndexLocal)
}

// catchUp is CaughtUp with the leader's read index taken by leaderIndex.
func (c *Cluster) catchUp(ctx context.Context, leaderIndex func(context.Context) (uint64, error)) error {
	for {
		var (
			index uint64
			err   error
		)
		if c.IsLeader() {
			index, err = leaderIndex(ctx)
		} else if _, addr := c.Leader(); addr != "" {
			var resp *forwardResponse
			resp, _, err = c.fwd.call(ctx, addr, &forwardRequest{Op: "read_index"})
			if err == nil && resp.Error != "" {
				err = errors.New(resp.Error)
			}
			if err == nil {
				index = resp.Index
			}
		} else {
			err = ErrUnavailable
		}
		if err == nil {
			if err := c.WaitApplied(ctx, index); err != nil {
				return err
			}
			c.markCaught.Do(func() {
				c.caughtUp.Store(true)
				close(c.startedUp)
			})
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consensus: read index: %v: %w", err, ErrUnavailable)
		case <-c.stop:
			return ErrUnavailable
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// beginRaftCall registers a call about to wait on a Raft future (raftCalls); false once Close
// has begun. A true answer must be followed by raftCalls.Done.
func (c *Cluster) beginRaftCall() bool {
	c.raftCallsMu.RLock()
	defer c.raftCallsMu.RUnlock()
	if c.raftCallsEnded {
		return false
	}
	c.raftCalls.Add(1)
	return true
}

// readIndexLocal is the leader's side of a read index: a barrier proves leadership and
// applies everything committed before it.
func (c *Cluster) readIndexLocal(ctx context.Context) (uint64, error) {
	if !c.beginRaftCall() {
		return 0, fmt.Errorf("consensus: barrier: %w", ErrUnavailable)
	}
	defer c.raftCalls.Done()
	if err := c.raft.Barrier(time.Until(deadline(ctx))).Error(); err != nil {
		return 0, fmt.Errorf("consensus: barrier: %w", err)
	}
	return c.AppliedIndex(), nil
}

// AppliedNotify returns the applied index and a channel closed when it next advances, so
// relays can wait for new entries without polling.
func (c *Cluster) AppliedNotify() (uint64, <-chan struct{}) { return c.applied.current() }

// ProposeBatch commits cmds in one log entry, in order (for a transaction whose events must
// keep their relative order), and returns their results once this node has applied them.
func (c *Cluster) ProposeBatch(ctx context.Context, cmds []*state.Command) ([]state.Result, error) {
	data, err := state.EncodeBatch(cmds)
	if err != nil {
		return nil, err
	}
	results, index, err := c.applyAnywhere(ctx, data)
	if err != nil {
		return nil, err
	}
	if err := c.WaitApplied(ctx, index); err != nil {
		return nil, err
	}
	return results, nil
}
