package consensus

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// waitClusterID waits until every node has recorded the same cluster id, and returns it.
func waitClusterID(t *testing.T, cs ...*Cluster) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		id := cs[0].ClusterID()
		same := id != ""
		for _, c := range cs[1:] {
			same = same && c.ClusterID() == id
		}
		if same {
			return id
		}
		if time.Now().After(deadline) {
			var got []string
			for _, c := range cs {
				got = append(got, c.NodeID()+"="+orNone(c.ClusterID()))
			}
			t.Fatalf("the nodes did not record one cluster id: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// recordedID is what data_dir/raft/cluster-id holds ("" when there is no such file).
func recordedID(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "raft", clusterIDFile))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// idEntries are the cluster ids minted in c's log, in log order.
func idEntries(t *testing.T, c *Cluster) []string {
	t.Helper()
	first, err := c.logDB.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, err := c.logDB.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := max(first, 1); i <= last; i++ {
		var l raft.Log
		if err := c.logDB.GetLog(i, &l); err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		if id, ok := clusterIDOf(&l); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// TestEveryMemberRecordsTheSameClusterID: a cluster formed from cluster.peers gets one id, from
// its first leader, which every member records on disk and keeps across a restart; the log holds
// the one entry that minted it, and the state never saw it (the room seeded after it is there).
func TestEveryMemberRecordsTheSameClusterID(t *testing.T) {
	var opts [3]Options
	cs := openThreeWith(t, func(i int, o *Options) { o.Secret = "s3cret"; opts[i] = *o })
	leader := settled(t, cs)
	id := waitClusterID(t, cs...)
	if !validClusterID(id) {
		t.Fatalf("cluster id %q is not 32 hex digits", id)
	}
	room := seedRoom(t, leader)
	for i, c := range cs {
		if got := recordedID(t, opts[i].DataDir); got != id {
			t.Fatalf("%s recorded %q on disk, want %s", c.NodeID(), got, id)
		}
		if got := idEntries(t, c); !slices.Equal(got, []string{id}) {
			t.Fatalf("%s's log mints %v, want [%s] once", c.NodeID(), got, id)
		}
		st, err := c.Status()
		if err != nil || st.ClusterID != id {
			t.Fatalf("%s status: cluster id %q (%v), want %s", c.NodeID(), st.ClusterID, err, id)
		}
	}
	// A restart reads it back; nothing is minted again.
	f := followersOf(leader, cs)[0]
	i := slices.Index(cs, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := Open(opts[i])
	if err != nil {
		t.Fatal(err)
	}
	cs[i] = c // closed by openThreeWith's cleanup
	if got := c.ClusterID(); got != id {
		t.Fatalf("after a restart %s knows cluster id %q, want %s", c.NodeID(), got, id)
	}
	propose(t, leader, message(t, room, 0))
	time.Sleep(3 * opts[i].HeartbeatTimeout)
	if got := idEntries(t, leader); !slices.Equal(got, []string{id}) {
		t.Fatalf("after a restart the leader's log mints %v, want [%s] once", got, id)
	}
}

// TestAClusterFromBeforeClusterIDsGetsOneOnUpgrade: the data_dirs of a cluster formed by a build
// without cluster ids (no id entry in the log, no cluster-id file) keep working under this one,
// whose first leader mints an id once: every member records it, the log holds it once, the
// state is as it was, and a second restart mints nothing more.
func TestAClusterFromBeforeClusterIDsGetsOneOnUpgrade(t *testing.T) {
	var opts [3]Options
	old := openThreeWith(t, func(i int, o *Options) { o.withoutClusterID = true; opts[i] = *o })
	leader := settled(t, old)
	room := seedRoom(t, leader)
	propose(t, leader, message(t, room, 0))
	time.Sleep(500 * time.Millisecond) // a build with ids would have minted one by now
	for i, c := range old {
		if c.ClusterID() != "" || recordedID(t, opts[i].DataDir) != "" || len(idEntries(t, c)) != 0 {
			t.Fatalf("the old build recorded a cluster id on %s", c.NodeID())
		}
	}
	pos := leader.Store().StreamPos()
	for _, c := range old {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}

	reopen := func() []*Cluster {
		var cs []*Cluster
		for i := range opts {
			opts[i].withoutClusterID = false
			c, err := Open(opts[i])
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			cs = append(cs, c)
		}
		return cs
	}
	cs := reopen()
	leader = settled(t, cs)
	id := waitClusterID(t, cs...)
	for i, c := range cs {
		if got := recordedID(t, opts[i].DataDir); got != id {
			t.Fatalf("%s recorded %q on disk, want %s", c.NodeID(), got, id)
		}
	}
	propose(t, leader, message(t, room, 1)) // still a working cluster, with its old state
	for _, c := range cs {
		deadline := time.Now().Add(10 * time.Second)
		for c.Store().StreamPos() <= pos {
			if time.Now().After(deadline) {
				t.Fatalf("%s is at stream position %d, want more than %d", c.NodeID(), c.Store().StreamPos(), pos)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got := idEntries(t, c); !slices.Equal(got, []string{id}) {
			t.Fatalf("%s's log mints %v, want [%s] once", c.NodeID(), got, id)
		}
	}

	for _, c := range cs {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	cs = reopen()
	leader = settled(t, cs)
	if got := waitClusterID(t, cs...); got != id {
		t.Fatalf("after another restart the cluster id is %s, was %s", got, id)
	}
	propose(t, leader, message(t, room, 2))
	time.Sleep(500 * time.Millisecond)
	if got := idEntries(t, leader); !slices.Equal(got, []string{id}) {
		t.Fatalf("after another restart the log mints %v, want [%s] once", got, id)
	}
}

// TestAMemberThatMissedTheIDEntryLearnsIt: a member without the id whose log no longer holds the
// entry that minted it (compacted into a snapshot; here its cluster-id file is also gone) learns
// the id from the leader, and records the same one.
func TestAMemberThatMissedTheIDEntryLearnsIt(t *testing.T) {
	var opts [3]Options
	cs := openThreeWith(t, func(i int, o *Options) {
		o.SnapshotThreshold, o.TrailingLogs, o.walSegmentSize = 20, 5, 32<<10
		opts[i] = *o
	})
	leader := settled(t, cs)
	id := waitClusterID(t, cs...)
	room := seedRoom(t, leader)
	for i := range 300 {
		propose(t, leader, message(t, room, i))
	}
	f := followersOf(leader, cs)[0]
	i := slices.Index(cs, f)
	for range 2 { // the second compacts the log the first snapshot covers
		if err := f.Snapshot(); err != nil {
			t.Fatal(err)
		}
	}
	if got := idEntries(t, f); len(got) != 0 {
		t.Fatalf("%s's log still holds the id entry: %v", f.NodeID(), got)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(opts[i].DataDir, "raft", clusterIDFile)); err != nil {
		t.Fatal(err)
	}
	c, err := Open(opts[i])
	if err != nil {
		t.Fatal(err)
	}
	cs[i] = c
	if got := waitClusterID(t, cs...); got != id {
		t.Fatalf("the cluster id is %s after %s learned it, was %s", got, c.NodeID(), id)
	}
	if got := recordedID(t, opts[i].DataDir); got != id {
		t.Fatalf("%s recorded %q on disk, want %s", c.NodeID(), got, id)
	}
}

// TestANodeOfAnotherClusterIsNotJoined: a node whose data_dir holds another cluster's log is
// refused (ErrJoinerForeign, answered as ErrJoinerLeads is), with both ids and what to do in the
// error, and nothing changes: here a follower of another 2-node cluster (same secret; it cannot
// lead with its peer down), and a node with a log from a build before cluster ids.
func TestANodeOfAnotherClusterIsNotJoined(t *testing.T) {
	withSecret := func(o *Options) { o.Secret = "s3cret" }
	c := openSingle(t, t.TempDir(), freeAddr(t), withSecret)
	defer c.Close()
	mine := waitClusterID(t, c)

	// openTwo opens a 2-node cluster and closes its first node once it has its id (unless the
	// nodes are of the old build): the second is left without a leader.
	openTwo := func(old bool) *Cluster {
		addrs := []string{freeAddr(t), freeAddr(t)}
		peers := []Peer{{"b1", addrs[0]}, {"b2", addrs[1]}}
		var bs []*Cluster
		for i, p := range peers {
			b, err := Open(Options{NodeID: p.ID, DataDir: t.TempDir(), RaftBind: addrs[i], Bootstrap: true, Peers: peers,
				Secret: "s3cret", HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
				Logger: quietLogger(), withoutClusterID: old})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			bs = append(bs, b)
		}
		settled(t, bs)
		if !old {
			waitClusterID(t, bs...)
		}
		if err := bs[0].Close(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for bs[1].IsLeader() {
			if time.Now().After(deadline) {
				t.Fatal("b2 still leads alone")
			}
			time.Sleep(10 * time.Millisecond)
		}
		return bs[1]
	}

	other := openTwo(false)
	theirs := other.ClusterID()
	before := members(t, c)
	err := within(t, "join", func() error { return c.AddVoter(context.Background(), "n2", other.opts.Advertise) })
	if !errors.Is(err, ErrJoinerForeign) || !errors.Is(err, ErrJoinerLeads) {
		t.Fatalf("join a follower of another cluster: %v, want ErrJoinerForeign (an ErrJoinerLeads)", err)
	}
	for _, want := range []string{mine, theirs, "empty its data_dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if got := other.ClusterID(); got != theirs {
		t.Fatalf("the other cluster's node now records %q, was %s", got, theirs)
	}

	legacy := openTwo(true)
	err = within(t, "join", func() error { return c.AddVoter(context.Background(), "n3", legacy.opts.Advertise) })
	if !errors.Is(err, ErrJoinerForeign) || !strings.Contains(err.Error(), "without a cluster id") {
		t.Fatalf("join a node with a log and no cluster id: %v, want ErrJoinerForeign", err)
	}
	if legacy.ClusterID() != "" {
		t.Fatalf("the refused node recorded cluster id %s", legacy.ClusterID())
	}
	if got := members(t, c); !slices.Equal(got, before) {
		t.Fatalf("membership changed:\n got %v\nwant %v", got, before)
	}
	room := seedRoom(t, c) // still a working cluster of one
	propose(t, c, message(t, room, 0))

	// A node refuses to take another cluster's id, whoever asks.
	if err := other.adoptClusterID(mine); err == nil || !strings.Contains(err.Error(), theirs) {
		t.Fatalf("a node of cluster %s adopted %s: %v", theirs, mine, err)
	}
}

// TestANodeWhoseDataDirWasEmptiedInPartDoesNotBootstrap: a data_dir that names a cluster but
// holds no Raft log (the log removed, the cluster-id file left) would bootstrap a new cluster
// under the old one's id; Open refuses that, naming the id, and still opens such a node to be
// joined. A damaged cluster-id file also stops Open.
func TestANodeWhoseDataDirWasEmptiedInPartDoesNotBootstrap(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	c := openSingle(t, dir, addr, nil)
	id := waitClusterID(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"wal", "snapshots"} {
		if err := os.RemoveAll(filepath.Join(dir, "raft", sub)); err != nil {
			t.Fatal(err)
		}
	}
	o := Options{NodeID: "n1", DataDir: dir, RaftBind: addr, Bootstrap: true, Logger: quietLogger()}
	if c, err := Open(o); err == nil {
		c.Close()
		t.Fatal("a node whose data_dir names a cluster and holds no log bootstrapped a new one")
	} else if !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), "empty the whole data_dir") {
		t.Fatalf("Open: %v: want the cluster id and what to do", err)
	}
	o.Bootstrap = false
	c, err := Open(o)
	if err != nil {
		t.Fatalf("Open to be joined: %v", err)
	}
	if got := c.ClusterID(); got != id {
		t.Fatalf("cluster id %q, want %s", got, id)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(filepath.Join(dir, "raft", clusterIDFile), []byte("not an id\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := Open(o); err == nil {
		c.Close()
		t.Fatal("a damaged cluster-id file was accepted")
	} else if !strings.Contains(err.Error(), "not a cluster id") {
		t.Fatalf("Open with a damaged cluster-id file: %v", err)
	}
}
