package consensus

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

func openThree(t *testing.T, secret string) []*Cluster {
	t.Helper()
	return openThreeWith(t, func(_ int, o *Options) { o.Secret = secret })
}

// openThreeWith opens a 3-node cluster whose options mutate may change, node i at a time.
func openThreeWith(t *testing.T, mutate func(i int, o *Options)) []*Cluster {
	t.Helper()
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	peers := []Peer{{"n1", addrs[0]}, {"n2", addrs[1]}, {"n3", addrs[2]}}
	var cs []*Cluster
	for i, p := range peers {
		o := Options{NodeID: p.ID, DataDir: t.TempDir(), RaftBind: addrs[i], Bootstrap: true, Peers: peers,
			Secret: "test cluster secret", HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond,
			Logger: quietLogger()}
		mutate(i, &o)
		c, err := Open(o)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	t.Cleanup(func() {
		for _, c := range cs {
			c.Close()
		}
	})
	return cs
}

func TestFollowerForwardsAndReadsItsWrite(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := waitLeader(t, cs...)
	var follower *Cluster
	for _, c := range cs {
		if c != leader {
			follower = c
			break
		}
	}
	room := seedRoom(t, follower)
	for i := 0; i < 20; i++ {
		res := propose(t, follower, message(t, room, i))
		// Read-your-writes: the follower has applied the event when Propose returns.
		if _, ok := follower.Store().Event(res.EventID); !ok {
			t.Fatalf("event %d not readable on the follower that accepted it", i)
		}
	}
	want := leader.Store().StreamPos()
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range cs {
		for c.Store().StreamPos() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s at %d, want %d", c.NodeID(), c.Store().StreamPos(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestWrongSecretIsRefused(t *testing.T) {
	cs := openThree(t, "right")
	waitLeader(t, cs...)
	for _, secret := range []string{"wrong", ""} {
		wrong := secretProof(secret)
		conn, err := net.Dial("tcp", cs[0].mux.advertise.String())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write(append([]byte{streamRaft}, wrong[:]...))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("secret %q: connection not closed by the node: %v", secret, err)
		}
		conn.Close()
	}
}

// TestANodeWithoutASecretTakesNoClusterConnections: the proof of an empty secret is one anybody
// can make, so a node without a secret (a cluster of one) refuses every cluster connection
// before Raft or forwarding sees a byte (a forwarded login would otherwise mint a token for any
// account, a forwarded join add any voter); and a cluster of more than one node without a
// secret does not open.
func TestANodeWithoutASecretTakesNoClusterConnections(t *testing.T) {
	c := openSingle(t, t.TempDir(), freeAddr(t), nil)
	defer c.Close()
	for _, kind := range []byte{streamRaft, streamForward} {
		proof := secretProof("")
		conn, err := net.Dial("tcp", c.mux.advertise.String())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write(append([]byte{kind}, proof[:]...))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		// Closed unread: an EOF, or a reset when the proof was still unread.
		if _, err := conn.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("stream %c: connection not closed by the node: %v", kind, err)
		}
		conn.Close()
	}
	peers := []Peer{{"n1", freeAddr(t)}, {"n2", freeAddr(t)}}
	o := Options{NodeID: "n1", DataDir: t.TempDir(), RaftBind: peers[0].RaftAddr, Bootstrap: true, Peers: peers,
		Logger: quietLogger()}
	if c, err := Open(o); err == nil {
		c.Close()
		t.Fatal("a node of a larger cluster opened without a secret")
	}
}

// TestCommitTimingsReachTheirHooks: every node reports each write to its Raft log (the leader
// its own appends, the followers the leader's), and a follower's proposer reports how long it
// waited for its own apply after the leader answered, a part of the whole commit.
func TestCommitTimingsReachTheirHooks(t *testing.T) {
	type commit struct{ seconds, applyWait float64 }
	stores := make([]atomic.Int64, 3)
	commits := make([]chan commit, 3)
	cs := openThreeWith(t, func(i int, o *Options) {
		commits[i] = make(chan commit, 64)
		o.OnLogStore = func(seconds float64, entries int) {
			if seconds > 0 && entries > 0 {
				stores[i].Add(int64(entries))
			}
		}
		o.OnCommit = func(seconds, applyWait float64, _ int) { commits[i] <- commit{seconds, applyWait} }
	})
	leader := waitLeader(t, cs...)
	fi := 0
	for cs[fi] == leader {
		fi++
	}
	before := make([]int64, len(cs))
	for i := range stores {
		before[i] = stores[i].Load()
	}
	room := seedRoom(t, cs[fi])
	const sends = 5
	for i := range sends {
		propose(t, cs[fi], message(t, room, i))
	}
	const commitsMade = 2 + sends // seedRoom proposes two: the user, then the room
	for n := 0; n < commitsMade; n++ {
		select {
		case c := <-commits[fi]:
			if c.applyWait < 0 || c.applyWait > c.seconds {
				t.Fatalf("a follower's commit took %vs, of which %vs waiting for its own apply", c.seconds, c.applyWait)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the follower reported %d of %d commits", n, commitsMade)
		}
	}
	select {
	case c := <-commits[fi]:
		t.Fatalf("the follower reported a commit it did not make (%vs)", c.seconds)
	default:
	}
	deadline := time.Now().Add(5 * time.Second)
	for i, c := range cs {
		// Every entry the follower proposed reached every node's log (plus the leader's own
		// entries, such as its first, which may be counted before "before").
		for stores[i].Load()-before[i] < sends {
			if time.Now().After(deadline) {
				t.Fatalf("%s reported %d entries written to its log, want at least %d", c.NodeID(), stores[i].Load()-before[i], sends)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestFollowersLearnACommitWithoutWaitingForTheCommitTimeout: with a commit timeout of 10 s
// (hashicorp/raft's only other way to tell followers the commit index of the log's last entry),
// a follower's proposals still answer at once, and the other follower applies them too: the
// leader's barrier carries the commit index (nudge.go).
func TestFollowersLearnACommitWithoutWaitingForTheCommitTimeout(t *testing.T) {
	cs := openThreeWith(t, func(_ int, o *Options) { o.CommitTimeout = 10 * time.Second })
	leader := waitLeader(t, cs...)
	var followers []*Cluster
	for _, c := range cs {
		if c != leader {
			followers = append(followers, c)
		}
	}
	room := seedRoom(t, followers[0])
	for i := range 3 {
		start := time.Now()
		res := propose(t, followers[0], message(t, room, i))
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("send %d on a follower took %v: it waited for the commit timeout", i, d)
		}
		deadline := time.Now().Add(3 * time.Second)
		for {
			if _, ok := followers[1].Store().Event(res.EventID); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("send %d: the other follower has not applied it after 3 s", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestAFollowerCatchesUpWithoutWaitingForTheCommitTimeout: a follower's read index (CaughtUp)
// waits until it has applied what the leader had applied after its barrier for the read. That
// is the last entry the state machine saw, whose commit the leader's nudges already told the
// followers of (the barrier itself is not applied there), so even with a commit timeout of
// 10 s the follower answers at once.
func TestAFollowerCatchesUpWithoutWaitingForTheCommitTimeout(t *testing.T) {
	cs := openThreeWith(t, func(_ int, o *Options) { o.CommitTimeout = 10 * time.Second })
	leader := waitLeader(t, cs...)
	seedRoom(t, leader)
	for _, c := range cs {
		if c == leader {
			continue
		}
		for i := range 2 {
			time.Sleep(50 * time.Millisecond) // the log quiet again
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			start := time.Now()
			err := c.CaughtUp(ctx)
			cancel()
			if err != nil {
				t.Fatalf("%s: read index %d: %v after %v", c.NodeID(), i, err, time.Since(start))
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("%s: read index %d took %v: it waited for the commit timeout", c.NodeID(), i, d)
			}
		}
	}
}

// TestAQuietLogIsNudgedAtOnce: on a quiet log the leader writes its barrier without waiting
// for the nudge delay, here stretched to 2 s (and the commit timeout to 10 s): a follower's
// lone sends answer well within it, and the other follower applies them. A second nudge right
// after the first finds the log busy and waits the delay out: no barrier for it meanwhile.
func TestAQuietLogIsNudgedAtOnce(t *testing.T) {
	const delay, gap = 2 * time.Second, 200 * time.Millisecond
	cs := openThreeWith(t, func(_ int, o *Options) {
		o.CommitTimeout, o.nudgeDelay, o.quietGap = 10*time.Second, delay, gap
	})
	leader := waitLeader(t, cs...)
	var followers []*Cluster
	for _, c := range cs {
		if c != leader {
			followers = append(followers, c)
		}
	}
	// Seeded on the leader, whose proposals do not wait for barriers. Its nudges after the
	// first find the log busy: the loop waits the delay out, then once more for the request
	// that waited meanwhile.
	room := seedRoom(t, leader)
	time.Sleep(2*delay + gap)
	for i := range 3 {
		time.Sleep(gap + 100*time.Millisecond) // each send finds the log quiet
		start := time.Now()
		res := propose(t, followers[0], message(t, room, i))
		if d := time.Since(start); d > delay/2 {
			t.Fatalf("send %d on a follower took %v: its barrier waited for the nudge delay", i, d)
		}
		deadline := time.Now().Add(delay / 2)
		for {
			if _, ok := followers[1].Store().Event(res.EventID); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("send %d: the other follower has not applied it after %v", i, delay/2)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	time.Sleep(gap + 100*time.Millisecond)
	last := leader.raft.LastIndex()
	leader.nudgeFollowers(last) // quiet: a barrier at once
	deadline := time.Now().Add(delay / 2)
	for leader.raft.LastIndex() == last {
		if time.Now().After(deadline) {
			t.Fatalf("a nudge on a quiet log wrote no barrier within %v", delay/2)
		}
		time.Sleep(5 * time.Millisecond)
	}
	last = leader.raft.LastIndex()
	leader.nudgeFollowers(last) // busy: the previous nudge was just now
	time.Sleep(gap / 2)
	if got := leader.raft.LastIndex(); got != last {
		t.Fatalf("a nudge right after another wrote a barrier at once (log %d -> %d): it must wait for the delay", last, got)
	}
}

// TestANudgeDoesNotCountEntriesSentBeforeTheCommit: an entry already in the log when a commit
// is applied may have been sent before it (a barrier in flight, say), carrying an older commit
// index; it must not stand in for the barrier. Here the leader is asked to pass on the commit
// of the entry before its last one, after everything settled: it writes a barrier, and both
// followers apply the last entry without waiting for the 10 s commit timeout.
func TestANudgeDoesNotCountEntriesSentBeforeTheCommit(t *testing.T) {
	cs := openThreeWith(t, func(_ int, o *Options) { o.CommitTimeout = 10 * time.Second })
	leader := waitLeader(t, cs...)
	seedRoom(t, leader)
	last, settled := leader.raft.LastIndex(), time.Now()
	for time.Since(settled) < 300*time.Millisecond { // the seed's own barriers
		time.Sleep(10 * time.Millisecond)
		if now := leader.raft.LastIndex(); now != last {
			last, settled = now, time.Now()
		}
	}
	applied := leader.AppliedIndex()
	leader.nudgeFollowers(last - 1)
	deadline := time.Now().Add(3 * time.Second)
	for leader.raft.LastIndex() == last {
		if time.Now().After(deadline) {
			t.Fatal("no barrier: the log's last entry was taken to carry a commit it was sent before")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, c := range cs {
		for c.AppliedIndex() < applied {
			if time.Now().After(deadline) {
				t.Fatalf("%s applied %d of %d", c.NodeID(), c.AppliedIndex(), applied)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestASnapshotInstalledOnARunningNodeIsObserved: a node too far behind for the leader's log
// gets the leader's snapshot, which replaces its whole state; the observer (the node's fan-out)
// is told, since none of the events in between were applied, or pushed, one by one.
func TestASnapshotInstalledOnARunningNodeIsObserved(t *testing.T) {
	var (
		opts      [3]Options
		opened    [3]atomic.Bool
		installed [3]atomic.Bool
	)
	cs := openThreeWith(t, func(i int, o *Options) {
		o.SnapshotThreshold, o.TrailingLogs, o.walSegmentSize = 20, 5, 32<<10 // compacted within a few hundred entries
		o.Observer = func(a *state.Applied) {
			if a.Restored && opened[i].Load() {
				installed[i].Store(true)
			}
		}
		opts[i] = *o
	})
	leader := waitLeader(t, cs...)
	f := 0
	for cs[f] == leader {
		f++
	}
	room := seedRoom(t, leader)
	if err := cs[f].Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 600 {
		propose(t, leader, message(t, room, i))
	}
	for range 2 { // the second compacts the log the first snapshot covers
		if err := leader.Snapshot(); err != nil {
			t.Fatal(err)
		}
	}
	if first, _ := leader.logDB.FirstIndex(); first <= cs[f].AppliedIndex()+1 {
		t.Fatalf("the leader's log was not compacted past the follower (first index %d)", first)
	}
	c, err := Open(opts[f]) // restores its own old snapshot, if any, before opened is set
	if err != nil {
		t.Fatal(err)
	}
	cs[f] = c // closed by openThreeWith's cleanup
	opened[f].Store(true)
	want := leader.Store().StreamPos()
	deadline := time.Now().Add(20 * time.Second)
	for c.Store().StreamPos() != want {
		if time.Now().After(deadline) {
			t.Fatalf("the follower is at stream position %d, the leader at %d", c.Store().StreamPos(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !installed[f].Load() {
		t.Fatal("the leader's snapshot replaced the follower's state and its observer was not told")
	}
}
