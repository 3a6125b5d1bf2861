package consensus

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestARejoinOfAWipedVoterIsRefused: a voter's data_dir is emptied and the node, restarted with
// the defaults, bootstraps a cluster of its own at the same address. A join of it under its
// old id and address used to answer ok at once ("already a member") without looking at the
// node, which hid that the leader was replicating this cluster's log into another cluster's.
// It is refused as any joiner that leads a cluster of its own, or records another id, is.
func TestARejoinOfAWipedVoterIsRefused(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := settled(t, cs)
	waitClusterID(t, cs...)
	wiped := followersOf(leader, cs)[0]
	id, addr := wiped.NodeID(), wiped.opts.Advertise
	if err := within(t, "rejoin of a live voter", func() error { return leader.AddVoter(context.Background(), id, addr) }); err != nil {
		t.Fatalf("rejoin of a live voter: %v, want ok", err)
	}
	if err := wiped.Close(); err != nil {
		t.Fatal(err)
	}
	// It bootstraps alone first (another secret keeps this cluster's leader out meanwhile), as
	// a node started with the defaults on an empty data_dir does, and mints its own id; then it
	// runs with this cluster's secret again, where this cluster's leader reaches it.
	dir := t.TempDir()
	open := func(secret string) *Cluster {
		c, err := Open(Options{NodeID: id, DataDir: dir, RaftBind: addr, Bootstrap: true,
			Peers: []Peer{{id, addr}}, Secret: secret, HeartbeatTimeout: 150 * time.Millisecond,
			ElectionTimeout: 150 * time.Millisecond, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	alone := open("another secret")
	theirs := waitClusterID(t, alone)
	if err := alone.Close(); err != nil {
		t.Fatal(err)
	}
	reborn := open("s3cret")
	t.Cleanup(func() { reborn.Close() })
	if got := reborn.ClusterID(); got != theirs {
		t.Fatalf("the wiped node records %q, want its own %s", got, theirs)
	}
	err := within(t, "rejoin of the wiped voter", func() error { return leader.AddVoter(context.Background(), id, addr) })
	if !errors.Is(err, ErrJoinerLeads) {
		t.Fatalf("rejoin of a voter that now belongs to a cluster of its own: %v, want ErrJoinerLeads or ErrJoinerForeign", err)
	}
}
