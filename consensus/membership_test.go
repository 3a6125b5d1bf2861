package consensus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// members is c's view of the membership as "id@addr/suffrage", sorted.
func members(t *testing.T, c *Cluster) []string {
	t.Helper()
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range st.Members {
		out = append(out, m.ID+"@"+m.RaftAddr+"/"+m.Suffrage)
	}
	slices.Sort(out)
	return out
}

// within runs f, failing the test when it has not answered in 20 s: a membership change that
// lost its quorum never does.
func within(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no answer after 20 s (the cluster lost its quorum?)", what)
		return nil
	}
}

// settled waits for a leader that every node knows of (a follower forwards changes to it).
func settled(t *testing.T, cs []*Cluster) *Cluster {
	t.Helper()
	leader := waitLeader(t, cs...)
	deadline := time.Now().Add(10 * time.Second)
	for _, c := range cs {
		for id, _ := c.Leader(); id != leader.NodeID(); id, _ = c.Leader() {
			if time.Now().After(deadline) {
				t.Fatalf("%s does not know the leader %s", c.NodeID(), leader.NodeID())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return leader
}

func followersOf(leader *Cluster, cs []*Cluster) []*Cluster {
	var out []*Cluster
	for _, c := range cs {
		if c != leader {
			out = append(out, c)
		}
	}
	return out
}

// Joining with the leader's id and another address, on the leader or through a follower, is
// refused and removes nothing: it used to remove the leader first, which stepped down, so the
// add failed ("node is not the leader") and the 3-node cluster was left with 2 members.
func TestJoinWithTheLeadersIDAndAnotherAddressRemovesNothing(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := settled(t, cs)
	before := members(t, leader)
	wrong := freeAddr(t)
	for _, via := range []*Cluster{leader, followersOf(leader, cs)[0]} {
		err := within(t, "join", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			return via.AddVoter(ctx, leader.NodeID(), wrong)
		})
		if !errors.Is(err, ErrRaftAddrConflict) {
			t.Fatalf("join %s@%s via %s: %v, want ErrRaftAddrConflict", leader.NodeID(), wrong, via.NodeID(), err)
		}
		if !strings.Contains(err.Error(), leader.opts.Advertise) {
			t.Errorf("error %q does not name the leader's address", err)
		}
	}
	time.Sleep(300 * time.Millisecond) // a step-down would show by now
	if !leader.IsLeader() {
		t.Fatal("the leader stepped down")
	}
	if got := members(t, leader); !slices.Equal(got, before) {
		t.Fatalf("membership changed:\n got %v\nwant %v", got, before)
	}
}

// A follower restarted at a new address is joined there: its entry changes in place, one
// change, still three voters, nobody removed, and it is back in the cluster.
func TestJoinWithAKnownIDMovesItInPlace(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := settled(t, cs)
	i := slices.Index(cs, followersOf(leader, cs)[1])
	f := cs[i]
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	o := f.opts
	o.RaftBind, o.Advertise = freeAddr(t), ""
	moved, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	cs[i] = moved // the same array as openThree's, whose cleanup closes it

	for _, via := range []*Cluster{followersOf(leader, cs)[0], leader} { // forwarded, then idempotent
		if err := within(t, "join", func() error { return via.AddVoter(context.Background(), moved.NodeID(), o.RaftBind) }); err != nil {
			t.Fatalf("join %s@%s via %s: %v", moved.NodeID(), o.RaftBind, via.NodeID(), err)
		}
	}
	got := members(t, leader)
	if len(got) != 3 || !slices.Contains(got, moved.NodeID()+"@"+o.RaftBind+"/Voter") {
		t.Fatalf("membership %v, want 3 voters with %s@%s", got, moved.NodeID(), o.RaftBind)
	}
	if !leader.IsLeader() {
		t.Fatal("the leader stepped down")
	}
	settled(t, cs) // the moved node hears from the leader again
}

// A single node restarted at a new Raft address still lists its old one; `join n1@new` is the
// documented repair. It used to remove n1 first, which raft refuses ("need at least one voter").
func TestASingleNodeMovedToANewAddressIsRepairedByJoin(t *testing.T) {
	dir := t.TempDir()
	c := openSingle(t, dir, freeAddr(t), nil)
	room := seedRoom(t, c)
	propose(t, c, message(t, room, 0))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	newAddr := freeAddr(t)
	c = openSingle(t, dir, newAddr, nil)
	defer c.Close()
	if err := within(t, "join", func() error { return c.AddVoter(context.Background(), "n1", newAddr) }); err != nil {
		t.Fatalf("join n1@%s: %v", newAddr, err)
	}
	if got, want := members(t, c), []string{"n1@" + newAddr + "/Voter"}; !slices.Equal(got, want) {
		t.Fatalf("membership %v, want %v", got, want)
	}
	propose(t, c, message(t, room, 1)) // still a working cluster of one
}

// A new id at an address another member holds is refused: the old code removed that member
// (here a live follower; it may as well be the leader) to make room.
func TestJoinRefusesAnAddressAnotherMemberHolds(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := settled(t, cs)
	before := members(t, leader)
	fs := followersOf(leader, cs)
	for _, tc := range []struct {
		via    *Cluster
		holder *Cluster
	}{{leader, fs[0]}, {fs[1], fs[0]}, {fs[0], leader}} {
		err := within(t, "join", func() error {
			return tc.via.AddVoter(context.Background(), "n4", tc.holder.opts.Advertise)
		})
		if !errors.Is(err, ErrRaftAddrConflict) {
			t.Fatalf("join n4 at %s's address via %s: %v, want ErrRaftAddrConflict", tc.holder.NodeID(), tc.via.NodeID(), err)
		}
		if !strings.Contains(err.Error(), tc.holder.NodeID()) {
			t.Errorf("error %q does not name %s", err, tc.holder.NodeID())
		}
	}
	if got := members(t, leader); !slices.Equal(got, before) {
		t.Fatalf("membership changed:\n got %v\nwant %v", got, before)
	}
}

// An address no node can dial never reaches the membership: on a single node it made the
// quorum 2 of 2, with no leader, and the bad voter could no longer be removed.
func TestJoinRefusesAnAddressNobodyCanDial(t *testing.T) {
	c := openSingle(t, t.TempDir(), freeAddr(t), nil)
	defer c.Close()
	bad := []string{"127.0.0.1:abc", ":7000", "0.0.0.0:7000", "[::]:7000", "[::ffff:0.0.0.0]:7000",
		"127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+7000", "127.0.0.1", "bad host:7000",
		"host/x:7000", ""}
	for i, addr := range bad {
		err := within(t, fmt.Sprintf("join %q", addr), func() error {
			return c.AddVoter(context.Background(), fmt.Sprintf("x%d", i), addr)
		})
		if !errors.Is(err, ErrInvalidRaftAddr) {
			t.Errorf("join at %q: %v, want ErrInvalidRaftAddr", addr, err)
		}
	}
	if got := members(t, c); len(got) != 1 {
		t.Fatalf("membership %v, want n1 alone", got)
	}
	for _, good := range []string{"127.0.0.1:7000", "[::1]:7000", "node4.example.internal:65535", "localhost:1"} {
		if err := ValidateRaftAddr(good); err != nil {
			t.Errorf("ValidateRaftAddr(%q): %v", good, err)
		}
	}
}

// Removing an id that is not a member is ErrNotMember, on the leader and through a follower:
// raft commits the unchanged configuration and answers success, so a typo looked like a
// removal.
func TestRemoveAnUnknownNodeIsNotMember(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := settled(t, cs)
	before := members(t, leader)
	for _, via := range []*Cluster{leader, followersOf(leader, cs)[0]} {
		err := within(t, "remove", func() error { return via.RemoveServer(context.Background(), "n9") })
		if !errors.Is(err, ErrNotMember) {
			t.Fatalf("remove n9 via %s: %v, want ErrNotMember", via.NodeID(), err)
		}
		if !strings.Contains(err.Error(), "n9") {
			t.Errorf("error %q does not name n9", err)
		}
	}
	if got := members(t, leader); !slices.Equal(got, before) {
		t.Fatalf("membership changed:\n got %v\nwant %v", got, before)
	}
	// A member is still removed.
	victim := followersOf(leader, cs)[1]
	if err := within(t, "remove", func() error { return leader.RemoveServer(context.Background(), victim.NodeID()) }); err != nil {
		t.Fatalf("remove %s: %v", victim.NodeID(), err)
	}
	if got := members(t, leader); len(got) != 2 {
		t.Fatalf("membership %v after removing %s", got, victim.NodeID())
	}
}

// A new voter must answer at its address before it is added: one that does not (not started,
// another secret) would count toward the quorum at once, and on a single node leave none to
// remove it with. One that leads a cluster of its own (it bootstrapped) is refused too.
func TestJoinRefusesANodeThatDoesNotAnswer(t *testing.T) {
	withSecret := func(s string) func(*Options) { return func(o *Options) { o.Secret = s } }
	c := openSingle(t, t.TempDir(), freeAddr(t), withSecret("s3cret"))
	defer c.Close()
	stranger := openSingle(t, t.TempDir(), freeAddr(t), withSecret("another"))
	defer stranger.Close()
	stray := openSingle(t, t.TempDir(), freeAddr(t), withSecret("s3cret"))
	defer stray.Close()
	for _, tc := range []struct {
		name, addr string
		want       error
	}{
		{"nothing listening", freeAddr(t), ErrJoinerUnreachable},
		{"another cluster.secret", stranger.opts.Advertise, ErrJoinerUnreachable},
		{"a node that bootstrapped alone", stray.opts.Advertise, ErrJoinerLeads},
	} {
		err := within(t, tc.name, func() error { return c.AddVoter(context.Background(), "n2", tc.addr) })
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: join n2@%s: %v, want %v", tc.name, tc.addr, err, tc.want)
		}
	}
	if got := members(t, c); len(got) != 1 {
		t.Fatalf("membership %v, want n1 alone", got)
	}
	room := seedRoom(t, c) // still a working cluster of one
	propose(t, c, message(t, room, 0))

	// A node started to be joined (no bootstrap) answers, is added, and catches up.
	addr := freeAddr(t)
	n2, err := Open(Options{NodeID: "n2", DataDir: t.TempDir(), RaftBind: addr, Secret: "s3cret",
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	if err := within(t, "join", func() error { return c.AddVoter(context.Background(), "n2", addr) }); err != nil {
		t.Fatalf("join n2@%s: %v", addr, err)
	}
	// Answered once n2 caught up and was made a voter; it was told the cluster's id first.
	if got, want := members(t, c), []string{"n1@" + c.opts.Advertise + "/Voter", "n2@" + addr + "/Voter"}; !slices.Equal(got, want) {
		t.Fatalf("membership %v after the join, want %v", got, want)
	}
	if n2.ClusterID() == "" || n2.ClusterID() != c.ClusterID() {
		t.Fatalf("n2 records cluster id %q, the leader %q", n2.ClusterID(), c.ClusterID())
	}
	propose(t, c, message(t, room, 1))
	deadline := time.Now().Add(10 * time.Second)
	for n2.AppliedIndex() < c.AppliedIndex() {
		if time.Now().After(deadline) {
			t.Fatalf("n2 applied %d, the leader %d", n2.AppliedIndex(), c.AppliedIndex())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeJoiner answers the cluster channel at its address as a new node would (a probe: no log,
// no cluster id; told the id: recorded), but never answers Raft: it reads what the leader sends
// and says nothing back, like a node that hangs, or has a disk too slow to ever catch up.
type fakeJoiner struct {
	addr    string
	m       *mux
	wg      sync.WaitGroup
	adopted atomic.Value // string
	once    sync.Once
}

// close stops it answering, and frees its address.
func (fj *fakeJoiner) close() {
	fj.once.Do(func() {
		fj.m.close()
		fj.wg.Wait()
	})
}

func startFakeJoiner(t *testing.T, id, secret string) *fakeJoiner {
	t.Helper()
	ln, err := net.Listen("tcp", freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	fj := &fakeJoiner{addr: ln.Addr().String(), m: newMux(ln, id, secret, nil, nil, quietLogger())}
	accept := func(kind byte, serve func(net.Conn)) {
		fj.wg.Add(1)
		go func() {
			defer fj.wg.Done()
			for {
				conn, err := fj.m.streams[kind].Accept()
				if err != nil {
					return
				}
				fj.wg.Add(1)
				go func() {
					defer fj.wg.Done()
					defer conn.Close()
					serve(conn)
				}()
			}
		}()
	}
	accept(streamRaft, func(conn net.Conn) { _, _ = io.Copy(io.Discard, conn) })
	accept(streamForward, func(conn net.Conn) {
		r := bufio.NewReader(conn)
		for {
			var req forwardRequest
			if _, err := readFrame(r, &req); err != nil {
				return
			}
			resp := &forwardResponse{Error: "not the leader", Retry: true}
			switch req.Op {
			case "probe":
				resp = &forwardResponse{Probe: &probeInfo{NodeID: id}}
			case "adopt_cluster_id":
				fj.adopted.Store(req.ClusterID)
				resp = &forwardResponse{}
			}
			if err := writeFrame(conn, resp, nil); err != nil {
				return
			}
		}
	})
	t.Cleanup(fj.close)
	return fj
}

// A joining node is a non-voter until it has caught up: one that never does is answered with
// ErrJoinerCatchingUp, stays a non-voter, and takes no vote meanwhile, so a single node keeps
// its quorum of one and commits alone (a voter added at once made it 2 of 2, with no quorum left
// to remove it with). Removing it then takes it out for good: the leader's promotions never
// bring it back.
func TestAJoinerThatNeverCatchesUpTakesNoVote(t *testing.T) {
	c := openSingle(t, t.TempDir(), freeAddr(t), func(o *Options) {
		o.Secret = "s3cret"
		o.joinCatchUp = time.Second
		o.membershipInterval = 50 * time.Millisecond
	})
	t.Cleanup(func() { c.Close() }) // after the fake's, whose close ends Raft's calls to it at once
	id := waitClusterID(t, c)
	slow := startFakeJoiner(t, "slow", "s3cret")
	start := time.Now()
	err := within(t, "join", func() error { return c.AddVoter(context.Background(), "slow", slow.addr) })
	if !errors.Is(err, ErrJoinerCatchingUp) {
		t.Fatalf("join a node that never catches up: %v, want ErrJoinerCatchingUp", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the join answered after %v, its wait is 1 s", d)
	}
	for _, want := range []string{"non-voter", "slow", "join it again", "remove it"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if got, _ := slow.adopted.Load().(string); got != id {
		t.Fatalf("the joining node was told cluster id %q, want %s", got, id)
	}
	want := []string{"n1@" + c.opts.Advertise + "/Voter", "slow@" + slow.addr + "/Nonvoter"}
	if got := members(t, c); !slices.Equal(got, want) {
		t.Fatalf("membership %v, want %v", got, want)
	}
	room := seedRoom(t, c) // a quorum of one still
	for i := range 5 {
		propose(t, c, message(t, room, i))
	}
	if !c.IsLeader() {
		t.Fatal("the leader stepped down")
	}
	// Asked again, it waits again, and answers the same.
	if err := within(t, "join", func() error { return c.AddVoter(context.Background(), "slow", slow.addr) }); !errors.Is(err, ErrJoinerCatchingUp) {
		t.Fatalf("join it again: %v, want ErrJoinerCatchingUp", err)
	}
	if err := within(t, "remove", func() error { return c.RemoveServer(context.Background(), "slow") }); err != nil {
		t.Fatalf("remove the non-voter: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // several turns of the leader's membership loop
	if got := members(t, c); !slices.Equal(got, want[:1]) {
		t.Fatalf("membership %v after the removal, want %v", got, want[:1])
	}
}

// configurations are the memberships c's log holds, in log order, each as members() shows one.
func configurations(t *testing.T, c *Cluster) [][]string {
	t.Helper()
	first, _ := c.logDB.FirstIndex()
	last, _ := c.logDB.LastIndex()
	var out [][]string
	for i := max(first, 1); i <= last; i++ {
		var l raft.Log
		if err := c.logDB.GetLog(i, &l); err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		if l.Type != raft.LogConfiguration {
			continue
		}
		var ms []string
		for _, s := range raft.DecodeConfiguration(l.Data).Servers {
			ms = append(ms, string(s.ID)+"/"+s.Suffrage.String())
		}
		slices.Sort(ms)
		out = append(out, ms)
	}
	return out
}

// A join that answers before its node has caught up leaves a non-voter, which the leader makes
// a voter once it has caught up, with nobody asking again; a join repeated afterwards answers at
// once. Here a node that never catches up holds the address during the join, then the real node
// takes its place (and learns the cluster id from the leader). The log shows the node added as a
// non-voter first.
func TestTheLeaderPromotesANonvoterOnceItHasCaughtUp(t *testing.T) {
	c := openSingle(t, t.TempDir(), freeAddr(t), func(o *Options) {
		o.Secret = "s3cret"
		o.joinCatchUp = 500 * time.Millisecond
	})
	t.Cleanup(func() { c.Close() })
	id := waitClusterID(t, c)
	room := seedRoom(t, c)
	for i := range 20 {
		propose(t, c, message(t, room, i))
	}
	stand := startFakeJoiner(t, "n2", "s3cret")
	addr := stand.addr
	err := within(t, "join", func() error { return c.AddVoter(context.Background(), "n2", addr) })
	if !errors.Is(err, ErrJoinerCatchingUp) {
		t.Fatalf("join a node that has not caught up: %v, want ErrJoinerCatchingUp", err)
	}
	stand.close()
	n2, err := Open(Options{NodeID: "n2", DataDir: t.TempDir(), RaftBind: addr, Secret: "s3cret",
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	want := []string{"n1@" + c.opts.Advertise + "/Voter", "n2@" + addr + "/Voter"}
	deadline := time.Now().Add(15 * time.Second)
	for got := members(t, c); !slices.Equal(got, want); got = members(t, c) {
		if time.Now().After(deadline) {
			t.Fatalf("membership %v, want %v: the leader did not promote n2", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := within(t, "join", func() error { return c.AddVoter(context.Background(), "n2", addr) }); err != nil {
		t.Fatalf("join a voter again: %v", err)
	}
	if got := waitClusterID(t, c, n2); got != id {
		t.Fatalf("cluster id %s, was %s", got, id)
	}
	propose(t, c, message(t, room, 20)) // now committed by both
	for n2.AppliedIndex() < c.AppliedIndex() {
		if time.Now().After(deadline) {
			t.Fatalf("n2 applied %d, the leader %d", n2.AppliedIndex(), c.AppliedIndex())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cfgs := configurations(t, c)
	staged := []string{"n1/Voter", "n2/Nonvoter"}
	if i := slices.IndexFunc(cfgs, func(m []string) bool { return slices.Equal(m, staged) }); i < 0 || i == len(cfgs)-1 ||
		!slices.Equal(cfgs[len(cfgs)-1], []string{"n1/Voter", "n2/Voter"}) {
		t.Fatalf("configurations in the log %v: want n2 added as a non-voter, then made a voter", cfgs)
	}
}
