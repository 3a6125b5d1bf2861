package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

// openJoiner starts a node as an operator does before `parley cluster join`: no bootstrap,
// waiting to be added.
func openJoiner(t *testing.T, id, secret string) *Cluster {
	t.Helper()
	c, err := Open(Options{NodeID: id, DataDir: t.TempDir(), RaftBind: freeAddr(t), Secret: secret,
		HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A join names the node by id and address; the node answering at that address must be that
// id. Raft counts votes by the id in the membership, so a node entered under another's id (a
// typo in --node-id, or an existing member's id "moved" to where a waiting node runs) would
// let that id vote twice in a term, once from each node: two leaders, a split brain. Both
// used to be accepted.
func TestJoinRefusesANodeThatAnswersUnderAnotherID(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := settled(t, cs)
	before := members(t, leader)
	n4 := openJoiner(t, "n4", "s3cret")
	member := followersOf(leader, cs)[0].NodeID()
	for _, id := range []string{"n5", member} {
		err := within(t, "join", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			return leader.AddVoter(ctx, id, n4.opts.Advertise)
		})
		if !errors.Is(err, ErrRaftAddrConflict) {
			t.Fatalf("join %s@%s (where n4 runs): %v, want ErrRaftAddrConflict", id, n4.opts.Advertise, err)
		}
		if !strings.Contains(err.Error(), "n4") {
			t.Errorf("error %q does not name the node that answered (n4)", err)
		}
	}
	if got := members(t, leader); !slices.Equal(got, before) {
		t.Fatalf("membership changed:\n got %v\nwant %v", got, before)
	}
	// Under its own id it joins.
	if err := within(t, "join", func() error { return leader.AddVoter(context.Background(), "n4", n4.opts.Advertise) }); err != nil {
		t.Fatalf("join n4@%s: %v", n4.opts.Advertise, err)
	}

	// A member's address taken by another node (its machine replaced without a remove): a
	// join of the member there is not answered ok as if nothing changed.
	f := followersOf(leader, cs)[1]
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	n6, err := Open(Options{NodeID: "n6", DataDir: t.TempDir(), RaftBind: f.opts.Advertise, Secret: "s3cret",
		HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer n6.Close()
	err = within(t, "join", func() error { return leader.AddVoter(context.Background(), f.NodeID(), f.opts.Advertise) })
	if !errors.Is(err, ErrRaftAddrConflict) || !strings.Contains(err.Error(), "n6") {
		t.Fatalf("join member %s at its address, where n6 runs now: %v, want ErrRaftAddrConflict naming n6", f.NodeID(), err)
	}
}

// eventIDs is every event of room on c, failing on one seen twice.
func eventIDs(t *testing.T, c *Cluster, roomID string) map[string]bool {
	t.Helper()
	all := map[string]bool{}
	before := int64(0)
	for {
		page, more, err := c.Store().History(roomID, before, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			if all[e.EventID] {
				t.Fatalf("%s: event %s twice", c.NodeID(), e.EventID)
			}
			all[e.EventID] = true
		}
		if !more || len(page) == 0 {
			return all
		}
		before = page[0].StreamPos
	}
}

// waitHealthy waits until c reports itself healthy: in contact with a quorum and caught up.
func waitHealthy(t *testing.T, c *Cluster) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !c.Healthy() {
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after 15 s", c.NodeID())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// docs/cluster.md, "The whole cluster stops": start the nodes again, in any order, on their
// data dirs; they elect a leader once a majority is back, and nothing committed is lost. Each
// node restarts from a snapshot and a compacted log, and reports itself unhealthy while it is
// alone (no quorum) and healthy, with everything, once a majority is back.
func TestAWholeClusterStoppedAndStartedInAnyOrderLosesNothing(t *testing.T) {
	cs := openThreeWith(t, func(_ int, o *Options) {
		o.Secret = "s3cret"
		o.SnapshotThreshold, o.TrailingLogs = 40, 10
		// Not so fast that a loaded machine flaps while it commits.
		o.HeartbeatTimeout, o.ElectionTimeout = 400*time.Millisecond, 400*time.Millisecond
	})
	leader := settled(t, cs)
	room := seedRoom(t, leader)
	follower := followersOf(leader, cs)[0]
	for i := range 120 {
		via := leader
		if i%4 == 0 {
			via = follower // forwarded to the leader
		}
		propose(t, via, message(t, room, i))
	}
	for _, c := range cs {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.CaughtUp(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Snapshot(); err != nil {
			t.Fatalf("snapshot %s: %v", c.NodeID(), err)
		}
	}
	for i := 120; i < 130; i++ { // after the snapshots: replayed from the log
		propose(t, leader, message(t, room, i))
	}
	want := eventIDs(t, leader, room.RoomID)
	if len(want) != 133 {
		t.Fatalf("%d events before the stop, want 133", len(want))
	}
	pos := leader.Store().StreamPos()
	for _, c := range cs {
		first, err := c.logDB.FirstIndex()
		if err != nil {
			t.Fatal(err)
		}
		if first <= 1 {
			t.Fatalf("%s: log not compacted (first index %d)", c.NodeID(), first)
		}
	}

	// The leader goes first, as in a rolling stop gone wrong; then the rest.
	order := append([]*Cluster{leader}, followersOf(leader, cs)...)
	for _, c := range order {
		if err := c.Close(); err != nil {
			t.Fatalf("close %s: %v", c.NodeID(), err)
		}
	}
	// Started again in the reverse order, the first alone for a while.
	for n, i := range []int{2, 0, 1} {
		c, err := Open(cs[i].opts)
		if err != nil {
			t.Fatalf("reopen %s: %v", cs[i].NodeID(), err)
		}
		cs[i] = c // openThreeWith's cleanup closes it
		if n == 0 {
			time.Sleep(2 * time.Second) // several election timeouts
			if c.Healthy() || c.IsLeader() {
				t.Fatalf("%s alone of three: healthy %v, leader %v; want neither", c.NodeID(), c.Healthy(), c.IsLeader())
			}
		}
	}
	settled(t, cs)
	for _, c := range cs {
		waitHealthy(t, c)
		if got := c.Store().StreamPos(); got != pos {
			t.Errorf("%s: stream position %d after the restart, want %d", c.NodeID(), got, pos)
		}
		if got := eventIDs(t, c, room.RoomID); len(got) != len(want) {
			t.Errorf("%s: %d events after the restart, want %d", c.NodeID(), len(got), len(want))
		}
		for id := range want {
			if !eventIDs(t, c, room.RoomID)[id] {
				t.Fatalf("%s lost event %s", c.NodeID(), id)
			}
		}
	}
	// A resend of a committed txn answers with its event, and a new write commits on all.
	res := propose(t, cs[2], message(t, room, 5))
	if id, _ := cs[2].Store().TxnEvent("@alice:t.test", "txn5"); res.EventID != id {
		t.Fatalf("txn resend gave %s, want %s", res.EventID, id)
	}
	propose(t, cs[1], message(t, room, 130))
	for _, c := range cs {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.CaughtUp(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if got := len(eventIDs(t, c, room.RoomID)); got != 134 {
			t.Errorf("%s: %d events after a new write, want 134", c.NodeID(), got)
		}
	}
}

// docs/cluster.md, "Shrinking": a node that is down can be removed, and a removed node started
// again with its old data (which still lists it as a voter: it never saw its removal) must not
// disrupt the cluster: no election, no term change, no way back in, no health. Removing the
// last-but-one member then leaves a single node that commits alone.
func TestARemovedNodeRestartedWithItsOldDataDisruptsNothing(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := settled(t, cs)
	room := seedRoom(t, leader)
	for i := range 10 {
		propose(t, leader, message(t, room, i))
	}
	fs := followersOf(leader, cs)
	victim, other := fs[0], fs[1]
	i := slices.Index(cs, victim)
	if err := victim.Close(); err != nil {
		t.Fatal(err)
	}
	// Removing a node that is down: the two others are a majority of both memberships.
	if err := within(t, "remove", func() error { return other.RemoveServer(context.Background(), victim.NodeID()) }); err != nil {
		t.Fatalf("remove %s (down) via %s: %v", victim.NodeID(), other.NodeID(), err)
	}
	for i := 10; i < 20; i++ {
		propose(t, other, message(t, room, i))
	}
	leader = settled(t, []*Cluster{leader, other})
	before, err := leader.Status()
	if err != nil {
		t.Fatal(err)
	}

	back, err := Open(victim.opts)
	if err != nil {
		t.Fatalf("reopen %s: %v", victim.NodeID(), err)
	}
	cs[i] = back                                // openThreeWith's cleanup closes it
	deadline := time.Now().Add(3 * time.Second) // 20 election timeouts
	for time.Now().Before(deadline) {
		if back.IsLeader() || back.Healthy() {
			t.Fatalf("the removed node is back: leader %v, healthy %v", back.IsLeader(), back.Healthy())
		}
		time.Sleep(20 * time.Millisecond)
	}
	after, err := leader.Status()
	if err != nil {
		t.Fatal(err)
	}
	if !leader.IsLeader() || after.Term != before.Term {
		t.Fatalf("the cluster was disrupted: %s leads %v, term %s, was %s", leader.NodeID(), leader.IsLeader(), after.Term, before.Term)
	}
	if isMember(t, leader, back.NodeID()) {
		t.Fatalf("%s is a member again", back.NodeID())
	}
	propose(t, other, message(t, room, 20))
	if got := len(eventIDs(t, back, room.RoomID)); got > 13 {
		t.Fatalf("the removed node received %d events, it had 13 when removed", got)
	}

	// The last but one: the leader removes the other, and commits alone.
	survivor, gone := leader, other
	if err := within(t, "remove", func() error { return survivor.RemoveServer(context.Background(), gone.NodeID()) }); err != nil {
		t.Fatalf("remove %s: %v", gone.NodeID(), err)
	}
	if got := members(t, survivor); len(got) != 1 {
		t.Fatalf("membership %v, want %s alone", got, survivor.NodeID())
	}
	propose(t, survivor, message(t, room, 21))
	if err := within(t, "remove", func() error { return survivor.RemoveServer(context.Background(), survivor.NodeID()) }); !errors.Is(err, ErrLastVoter) {
		t.Fatalf("the last member's removal of itself: %v, want ErrLastVoter", err)
	}
	propose(t, survivor, message(t, room, 22))
}

// cluster.peers must be identical on every initial voter. A node bootstrapped with other peers
// (here: none, so it forms a cluster of its own at an address the others list) holds another
// first configuration at the same index and term as theirs, so Raft's log matching cannot tell
// the two logs apart. Its cluster id must not become the others': that id is what tells this
// cluster's data from another's when nodes join.
func TestMembersBootstrappedWithOtherPeersShareNoClusterID(t *testing.T) {
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	peers := []Peer{{"n1", addrs[0]}, {"n2", addrs[1]}, {"n3", addrs[2]}}
	var cs []*Cluster
	var alone string
	var logs lockedBuffer              // n1's and n2's
	for _, i := range []int{2, 0, 1} { // n3 first, long enough to mint an id of its own
		p := peers[i]
		o := Options{NodeID: p.ID, DataDir: t.TempDir(), RaftBind: addrs[i], Bootstrap: true, Peers: peers,
			Secret: "s3cret", HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelError}))}
		if p.ID == "n3" {
			o.Peers = nil // its operator forgot cluster.peers: it bootstraps alone
			o.Logger = quietLogger()
		}
		c, err := Open(o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
		if p.ID == "n3" {
			alone = waitClusterID(t, c)
		}
	}
	// Until the others' leader has probed n3 and seen its first configuration: before that, no
	// id taken would prove nothing.
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs.from(0), "bootstrapped with other cluster.peers"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the others never noticed n3's other peers:\n%s", logs.from(0))
		}
	}
	for _, c := range cs[1:] {
		if got := c.ClusterID(); got == alone {
			t.Fatalf("%s took the cluster id %s of n3, which was bootstrapped with other peers", c.NodeID(), got)
		}
	}
}

// docs/cluster.md, "Growing" and "Shrinking", one node at a time while clients write: 3 nodes
// grow to 5 (joined through a follower) and shrink back to 3, the leader among the removed
// (removed through a follower, which forwards the removal to the leader itself). Every write
// acknowledged meanwhile is on each remaining node exactly once.
func TestGrowingToFiveAndShrinkingToThreeUnderTrafficLosesNothing(t *testing.T) {
	const secret = "s3cret"
	cs := openThreeWith(t, func(_ int, o *Options) {
		o.Secret = secret
		o.HeartbeatTimeout, o.ElectionTimeout = 400*time.Millisecond, 400*time.Millisecond
	})
	leader := settled(t, cs)
	room := seedRoom(t, leader)
	fs := followersOf(leader, cs)
	writer, via := fs[0], fs[1]

	// The traffic: one write after another through writer (a follower that stays), each
	// retried with the same event and txn id until acknowledged, as a client does.
	var (
		mu     sync.Mutex
		acked  []string
		failed error
	)
	stop, done := make(chan struct{}), make(chan struct{})
	cmds := make([]*state.Command, 2000) // sealed here: message may fail the test
	for i := range cmds {
		cmds[i] = message(t, room, i)
	}
	go func() {
		defer close(done)
		for _, cmd := range cmds {
			select {
			case <-stop:
				return
			default:
			}
			for attempt := 0; ; attempt++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				res, err := writer.Propose(ctx, cmd)
				cancel()
				if err == nil && res.OK() {
					mu.Lock()
					acked = append(acked, res.EventID)
					mu.Unlock()
					break
				}
				if attempt == 10 {
					mu.Lock()
					failed = fmt.Errorf("write %s: %v %+v", cmd.Event.TxnID, err, res)
					mu.Unlock()
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		if failed != nil {
			t.Fatal(failed)
		}
		return len(acked)
	}
	moreWrites := func(n int) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for start := count(); count() < start+n; {
			if time.Now().After(deadline) {
				t.Fatal("the traffic stalled")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	moreWrites(20)

	// Grow: n4, then n5, each a voter before the next is added.
	var added []*Cluster
	for _, id := range []string{"n4", "n5"} {
		n := openJoiner(t, id, secret)
		if err := within(t, "join", func() error { return via.AddVoter(context.Background(), id, n.opts.Advertise) }); err != nil {
			t.Fatalf("join %s via %s: %v", id, via.NodeID(), err)
		}
		added = append(added, n)
		moreWrites(20)
	}
	all := append(append([]*Cluster{}, cs...), added...)
	if got := members(t, leader); len(got) != 5 || slices.ContainsFunc(got, func(m string) bool { return !strings.HasSuffix(m, "/Voter") }) {
		t.Fatalf("membership %v, want 5 voters", got)
	}

	// Shrink: the leader first (through a follower), then n4.
	for _, victim := range []*Cluster{waitLeader(t, all...), added[0]} {
		var rest []*Cluster
		for _, c := range all {
			if c != victim {
				rest = append(rest, c)
			}
		}
		for attempt := 1; isMember(t, via, victim.NodeID()); attempt++ {
			err := within(t, "remove", func() error { return via.RemoveServer(context.Background(), victim.NodeID()) })
			if err != nil {
				// The leader removing itself may lose leadership as the removal commits.
				t.Logf("remove %s, attempt %d: %v", victim.NodeID(), attempt, err)
				if attempt == 5 {
					t.Fatalf("remove %s: %v", victim.NodeID(), err)
				}
			}
		}
		if err := victim.Close(); err != nil {
			t.Fatal(err)
		}
		settled(t, rest)
		all = rest
		moreWrites(20)
	}
	close(stop)
	<-done
	count() // no write failed

	want := []string{writer.NodeID(), via.NodeID(), "n5"}
	slices.Sort(want)
	for _, c := range all {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.CaughtUp(ctx) // its log holds the last change then
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range members(t, c) {
			if !strings.HasSuffix(m, "/Voter") {
				t.Fatalf("%s: membership %v, want 3 voters", c.NodeID(), members(t, c))
			}
			got = append(got, strings.Split(m, "@")[0])
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: members %v, want %v", c.NodeID(), got, want)
		}
		have := eventIDs(t, c, room.RoomID) // fails on an event stored twice
		for _, id := range acked {
			if !have[id] {
				t.Fatalf("%s lost acknowledged event %s", c.NodeID(), id)
			}
		}
		if len(have) != len(acked)+3 {
			t.Fatalf("%s holds %d events, want %d acknowledged and 3 of the room's creation", c.NodeID(), len(have), len(acked))
		}
	}
	t.Logf("%d writes acknowledged while the cluster grew to 5 and shrank to 3", len(acked))
}

// A node joining while the leadership moves: the join may be answered with an error (the
// leader it reached stepped down), and repeated, as cluster.join does, it ends with the node a
// voter, once, under one cluster id; the leadership moves again meanwhile.
func TestAJoinWhileTheLeaderChangesEndsWithTheNodeAVoter(t *testing.T) {
	const secret = "s3cret"
	cs := openThreeWith(t, func(_ int, o *Options) {
		o.Secret = secret
		o.HeartbeatTimeout, o.ElectionTimeout = 400*time.Millisecond, 400*time.Millisecond
	})
	leader := settled(t, cs)
	room := seedRoom(t, leader)
	for i := range 300 {
		propose(t, leader, message(t, room, i))
	}
	id := waitClusterID(t, cs...)
	n4 := openJoiner(t, "n4", secret)
	via := followersOf(leader, cs)[0]

	moved := make(chan error, 1)
	go func() {
		time.Sleep(20 * time.Millisecond) // while the join is under way
		moved <- leader.raft.LeadershipTransfer().Error()
	}()
	var err error
	for attempt := 1; ; attempt++ {
		err = within(t, "join", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			return via.AddVoter(ctx, "n4", n4.opts.Advertise)
		})
		if err == nil {
			break
		}
		t.Logf("join, attempt %d: %v", attempt, err)
		if attempt == 10 {
			t.Fatalf("join n4: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := <-moved; err != nil {
		t.Logf("leadership transfer: %v", err)
	}
	all := append(append([]*Cluster{}, cs...), n4)
	now := settled(t, all)
	want := []string{"n1/Voter", "n2/Voter", "n3/Voter", "n4/Voter"}
	deadline := time.Now().Add(10 * time.Second) // a follower hears of the last change a moment later
	for _, c := range all {
		for {
			var got []string
			for _, m := range members(t, c) {
				got = append(got, strings.Split(m, "@")[0]+"/"+strings.Split(m, "/")[1])
			}
			if slices.Equal(got, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: membership %v, want %v (leader %s)", c.NodeID(), got, want, now.NodeID())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if got := waitClusterID(t, all...); got != id {
		t.Fatalf("cluster id %s, was %s", got, id)
	}
	propose(t, n4, message(t, room, 300))
}

// Joining a voter's id at a new address moves its entry in place, and the node there votes at
// once: right for a node that moved with its data_dir, wrong for an empty one under that id (a
// machine rebuilt, a second copy started elsewhere). The voter's acknowledged entries would be
// gone from the quorum's count, and a committed entry held by one other node could be lost in
// the next election (docs/cluster.md, "A node loses its disk": remove it first). Such a move
// is refused; once the member is removed, the empty node joins as a new one.
func TestMovingAVoterToAnEmptyNodeIsRefused(t *testing.T) {
	const secret = "s3cret"
	cs := openThree(t, secret)
	leader := settled(t, cs)
	room := seedRoom(t, leader)
	propose(t, leader, message(t, room, 0))
	f := followersOf(leader, cs)[0]
	before := members(t, leader)
	empty := openJoiner(t, f.NodeID(), secret)
	for _, via := range []*Cluster{leader, followersOf(leader, cs)[1]} {
		err := within(t, "join", func() error { return via.AddVoter(context.Background(), f.NodeID(), empty.opts.Advertise) })
		if !errors.Is(err, ErrRaftAddrConflict) || !strings.Contains(err.Error(), "remove") {
			t.Fatalf("move voter %s to an empty node via %s: %v, want ErrRaftAddrConflict saying to remove it first", f.NodeID(), via.NodeID(), err)
		}
	}
	if got := members(t, leader); !slices.Equal(got, before) {
		t.Fatalf("membership changed:\n got %v\nwant %v", got, before)
	}
	if empty.ClusterID() != "" {
		t.Fatalf("the refused node was told the cluster id %s", empty.ClusterID())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := within(t, "remove", func() error { return leader.RemoveServer(context.Background(), f.NodeID()) }); err != nil {
		t.Fatalf("remove %s: %v", f.NodeID(), err)
	}
	if err := within(t, "join", func() error { return leader.AddVoter(context.Background(), f.NodeID(), empty.opts.Advertise) }); err != nil {
		t.Fatalf("join %s as a new node once removed: %v", f.NodeID(), err)
	}
	if !slices.Contains(members(t, leader), f.NodeID()+"@"+empty.opts.Advertise+"/Voter") {
		t.Fatalf("membership %v, want %s@%s a voter", members(t, leader), f.NodeID(), empty.opts.Advertise)
	}
}
