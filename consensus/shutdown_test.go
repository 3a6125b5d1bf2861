package consensus

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// A start that fails leaves nothing running: neither once Raft runs (a bootstrap Raft refuses)
// nor before (a configuration Raft refuses, with the transport already accepting).
func TestAFailedOpenLeavesNoGoroutine(t *testing.T) {
	cases := map[string]func(addr string, o *Options){
		"bootstrap refused": func(addr string, o *Options) {
			o.Peers = []Peer{{"n1", addr}, {"n2", addr}} // one address twice
		},
		"raft refused": func(_ string, o *Options) {
			o.HeartbeatTimeout, o.ElectionTimeout = time.Second, 100*time.Millisecond
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			addr := freeAddr(t)
			o := Options{NodeID: "n1", DataDir: t.TempDir(), RaftBind: addr, Bootstrap: true, Logger: quietLogger()}
			mutate(addr, &o)
			if c, err := Open(o); err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
		})
	}
}

// A leader that removes itself steps down, the others go on, and Close then stops it fully (with
// raft's ShutdownOnRemove, Raft stopped itself and Close left its transport accepting forever).
func TestALeaderThatRemovesItselfClosesCleanly(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // after openThreeWith's cleanup closes the nodes
	cs := openThreeWith(t, func(_ int, o *Options) {
		// Not so fast that a loaded machine (-race) flaps while the removal commits.
		o.HeartbeatTimeout, o.ElectionTimeout = 400*time.Millisecond, 400*time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var removed *Cluster
	for attempt := 1; removed == nil; attempt++ {
		leader := waitLeader(t, cs...)
		err := leader.RemoveServer(ctx, leader.NodeID())
		if err == nil {
			removed = leader
			break
		}
		// Leadership lost while committing: the removal may have committed all the same.
		t.Logf("attempt %d: %v", attempt, err)
		if next := waitLeader(t, cs...); next != leader && !isMember(t, next, leader.NodeID()) {
			removed = leader
		} else if attempt == 5 {
			t.Fatal("the leader could not remove itself")
		}
	}
	var rest []*Cluster
	for _, c := range cs {
		if c != removed {
			rest = append(rest, c)
		}
	}
	next := waitLeader(t, rest...)
	if isMember(t, next, removed.NodeID()) {
		t.Fatalf("%s still a member", removed.NodeID())
	}
	if removed.IsLeader() {
		t.Fatal("the removed leader still leads")
	}
	for _, c := range cs {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}
}

func isMember(t *testing.T, c *Cluster, id string) bool {
	t.Helper()
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Members {
		if m.ID == id {
			return true
		}
	}
	return false
}
