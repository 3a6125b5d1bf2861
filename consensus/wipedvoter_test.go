package consensus

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
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

// docs/cluster.md, "A node loses its disk": leader A commits X with C's ack while B is down;
// C's data_dir is lost and C comes back empty, still a voter; A is down. B's log lacks X and
// C's holds nothing, so C, as plain Raft, would vote for B, and B would lead without X: an
// acknowledged write lost. C gives no vote until a leader has caught it up, so nobody leads
// until A is back, and then X is committed on every node.
func TestAWipedVoterGivesNoVoteUntilCaughtUp(t *testing.T) {
	cs := openThree(t, "s3cret")
	a := settled(t, cs)
	room := seedRoom(t, a)
	for i := range 5 {
		propose(t, a, message(t, room, i))
	}
	fs := followersOf(a, cs)
	b, c := fs[0], fs[1]
	ib, ic, ia := slices.Index(cs, b), slices.Index(cs, c), slices.Index(cs, a)
	waitCaughtUp(t, b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	x := propose(t, a, message(t, room, 5)).EventID // committed by A and C alone
	for _, n := range []*Cluster{a, c} {
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}

	var logs lockedBuffer
	cs[ic] = reopenWiped(t, c, &logs) // openThreeWith's cleanup closes the reopened nodes
	back, err := Open(b.opts)
	if err != nil {
		t.Fatalf("reopen %s: %v", b.NodeID(), err)
	}
	cs[ib] = back
	// B campaigns every election timeout (150 ms) or so; C must refuse it every time.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range []*Cluster{cs[ib], cs[ic]} {
			if n.IsLeader() {
				t.Fatalf("%s leads with A down (holding X: %v): the wiped voter %s voted", n.NodeID(), hasEvent(n, x), c.NodeID())
			}
		}
		time.Sleep(20 * time.Millisecond)
	}

	if n := strings.Count(logs.from(0), "refusing votes"); n != 1 {
		t.Fatalf("the wiped voter logged its refusal %d times, want once", n)
	}

	if cs[ia], err = Open(a.opts); err != nil {
		t.Fatalf("reopen %s: %v", a.NodeID(), err)
	}
	settled(t, cs)
	propose(t, cs[ib], message(t, room, 6))
	for _, n := range cs {
		waitCaughtUp(t, n)
		if !hasEvent(n, x) {
			t.Errorf("%s lost the committed event X", n.NodeID())
		}
	}
	waitVotesAgain(t, cs[ic], &logs)
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
