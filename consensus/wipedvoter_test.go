package consensus

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

// reopenWiped starts c again under its id and address on an empty data_dir, without
// bootstrapping (cluster.join, or cluster.bootstrap false): a voter whose disk was lost and
// which the operator did not remove first.
// Its log, at Info, goes to logs.
func reopenWiped(t *testing.T, c *Cluster, logs *lockedBuffer) *Cluster {
	t.Helper()
	opts := c.opts
	opts.DataDir, opts.Bootstrap, opts.Peers = t.TempDir(), false, nil
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	back, err := Open(opts)
	if err != nil {
		t.Fatalf("reopen %s on an empty data_dir: %v", c.NodeID(), err)
	}
	return back
}

// hasEvent reports whether c has applied the event with id.
func hasEvent(c *Cluster, id string) bool {
	_, ok := c.Store().Event(id)
	return ok
}

// waitVotesAgain waits until c's vote guard has lifted, and checks that c said so once.
func waitVotesAgain(t *testing.T, c *Cluster, logs *lockedBuffer) {
	t.Helper()
	if c.transport.votes == nil {
		t.Fatalf("%s started on an empty data_dir without bootstrapping, and has no vote guard", c.NodeID())
	}
	deadline := time.Now().Add(15 * time.Second)
	for c.transport.votes.guarded.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("%s was not caught up in 15 s: it still refuses votes", c.NodeID())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(logs.from(0), "votes again"); n != 1 {
		t.Fatalf("%s logged that it votes again %d times, want once", c.NodeID(), n)
	}
}

// waitCaughtUp waits until c has applied everything its leader has committed.
func waitCaughtUp(t *testing.T, c *Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.CaughtUp(ctx); err != nil {
		t.Fatalf("%s catching up: %v", c.NodeID(), err)
	}
}

// wipedVoterScene is docs/cluster.md's "A node loses its disk": leader A commits X with C's
// ack while B is down, then A and C stop; B is back, and C is to come back empty.
type wipedVoterScene struct {
	cs         []*Cluster
	a, b, c    *Cluster // as they were before stopping
	ia, ib, ic int      // their places in cs
	room       *state.Room
	x          string // the event committed by A and C alone
}

// stageWipedVoter runs the scene on cs up to C's return, which the caller stages.
func stageWipedVoter(t *testing.T, cs []*Cluster) *wipedVoterScene {
	t.Helper()
	sc := &wipedVoterScene{cs: cs}
	sc.a = settled(t, cs)
	sc.room = seedRoom(t, sc.a)
	for i := range 5 {
		propose(t, sc.a, message(t, sc.room, i))
	}
	fs := followersOf(sc.a, cs)
	sc.b, sc.c = fs[0], fs[1]
	sc.ia, sc.ib, sc.ic = slices.Index(cs, sc.a), slices.Index(cs, sc.b), slices.Index(cs, sc.c)
	waitCaughtUp(t, sc.b)
	if err := sc.b.Close(); err != nil {
		t.Fatal(err)
	}
	sc.x = propose(t, sc.a, message(t, sc.room, 5)).EventID
	for _, n := range []*Cluster{sc.a, sc.c} {
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	back, err := Open(sc.b.opts)
	if err != nil {
		t.Fatalf("reopen %s: %v", sc.b.NodeID(), err)
	}
	cs[sc.ib] = back // openThreeWith's cleanup closes the reopened nodes
	return sc
}

// expectNoLeaderUntilABack checks that neither B nor the wiped C leads for 3 s (B campaigns
// every election timeout, 150 ms, or so; C must refuse it every time), then brings A back and
// checks that X is committed on every node and that C votes again.
func (sc *wipedVoterScene) expectNoLeaderUntilABack(t *testing.T, logs *lockedBuffer) {
	t.Helper()
	cs := sc.cs
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range []*Cluster{cs[sc.ib], cs[sc.ic]} {
			if n.IsLeader() {
				t.Fatalf("%s leads with A down (holding X: %v): the wiped voter %s voted", n.NodeID(), hasEvent(n, sc.x), sc.c.NodeID())
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	var err error
	if cs[sc.ia], err = Open(sc.a.opts); err != nil {
		t.Fatalf("reopen %s: %v", sc.a.NodeID(), err)
	}
	settled(t, cs)
	propose(t, cs[sc.ib], message(t, sc.room, 6))
	for _, n := range cs {
		waitCaughtUp(t, n)
		if !hasEvent(n, sc.x) {
			t.Errorf("%s lost the committed event X", n.NodeID())
		}
	}
	waitVotesAgain(t, cs[sc.ic], logs)
}

// docs/cluster.md, "A node loses its disk": leader A commits X with C's ack while B is down;
// C's data_dir is lost and C comes back empty, still a voter; A is down. B's log lacks X and
// C's holds nothing, so C, as plain Raft, would vote for B, and B would lead without X: an
// acknowledged write lost. C gives no vote until a leader has caught it up, so nobody leads
// until A is back, and then X is committed on every node.
func TestAWipedVoterGivesNoVoteUntilCaughtUp(t *testing.T) {
	sc := stageWipedVoter(t, openThree(t, "s3cret"))
	var logs lockedBuffer
	sc.cs[sc.ic] = reopenWiped(t, sc.c, &logs)
	sc.expectNoLeaderUntilABack(t, &logs) // C refused B every time
	if n := strings.Count(logs.from(0), "refusing votes"); n != 1 {
		t.Fatalf("the wiped voter logged its refusal %d times, want once", n)
	}
}

// Once a leader has caught it up (here from a snapshot: the leader's log is compacted), a
// voter that came back on an empty data_dir votes again: the leader is stopped, and the two
// others, which each need the other's vote, elect one and commit.
func TestAWipedVoterVotesAgainOnceCaughtUp(t *testing.T) {
	cs := openThreeWith(t, func(_ int, o *Options) {
		o.Secret = "s3cret"
		o.SnapshotThreshold, o.TrailingLogs = 40, 10
	})
	a := settled(t, cs)
	room := seedRoom(t, a)
	for i := range 60 {
		propose(t, a, message(t, room, i))
	}
	if err := a.Snapshot(); err != nil {
		t.Fatal(err)
	}
	for i := 60; i < 65; i++ { // after the snapshot: sent from the log
		propose(t, a, message(t, room, i))
	}
	if first, err := a.logDB.FirstIndex(); err != nil || first <= 1 {
		t.Fatalf("the leader's log is not compacted (first index %d, %v): it would not send a snapshot", first, err)
	}
	c := followersOf(a, cs)[1]
	ic := slices.Index(cs, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	cs[ic] = reopenWiped(t, c, &logs)
	waitVotesAgain(t, cs[ic], &logs)
	want := len(eventIDs(t, a, room.RoomID))

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	rest := followersOf(a, cs)
	leader := settled(t, rest)
	propose(t, leader, message(t, room, 65))
	for _, n := range rest {
		waitCaughtUp(t, n)
		if got := len(eventIDs(t, n, room.RoomID)); got != want+1 {
			t.Errorf("%s: %d events, want %d", n.NodeID(), got, want+1)
		}
	}
}

// hashicorp/raft's "bootstrap one server" way, which the config allows: n1 bootstraps the
// whole membership, n2 and n3 start empty with bootstrap false. Both are guarded (empty, not
// bootstrapped), yet must vote for n1, whose log holds only the bootstrap configuration, or
// nobody ever leads (until 2026-12-07 nobody did).
func TestEmptyVotersElectTheNodeThatBootstrappedThePeers(t *testing.T) {
	cs := openThreeWith(t, func(i int, o *Options) {
		o.Secret = "s3cret"
		if i > 0 {
			o.Bootstrap = false
		}
	})
	leader := settled(t, cs) // fails with "no leader" when n2 and n3 refuse n1
	room := seedRoom(t, leader)
	propose(t, cs[1], message(t, room, 0))
	for _, c := range cs[1:] {
		waitCaughtUp(t, c)
		if c.transport.votes == nil {
			t.Fatalf("%s started empty without bootstrapping, and has no vote guard", c.NodeID())
		}
		deadline := time.Now().Add(15 * time.Second)
		for c.transport.votes.guarded.Load() { // lifts at the next append once caught up
			if time.Now().After(deadline) {
				t.Fatalf("%s was caught up but still refuses votes after 15 s", c.NodeID())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
