package consensus

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"

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

// Close during the replay of the log after a restart stops the node between applied batches:
// it does not wait for the whole replay (the start-up catch-up once waited on a barrier, which
// resolves only after everything before it is applied, and Close waited for that).
func TestCloseDuringTheReplayAfterARestartDoesNotWaitForIt(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	c := openSingle(t, dir, addr, nil)
	room := seedRoom(t, c)
	for i := range 2000 { // one entry each: the replay comes in 32 applied batches (64 entries each)
		propose(t, c, message(t, room, i))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	const perBatch = 50 * time.Millisecond // the replay takes seconds
	var batches atomic.Int32
	o := Options{NodeID: "n1", DataDir: dir, RaftBind: addr, Bootstrap: true,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, Logger: quietLogger(),
		Observer: func(*state.Applied) { batches.Add(1); time.Sleep(perBatch) }}
	c, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, c)
	for batches.Load() < 3 { // the catch-up at start is waiting by now
		time.Sleep(time.Millisecond)
	}
	start, before := time.Now(), batches.Load()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Raft's FSM goroutine picks between its queue and shutdown at random, so a few more
	// batches may be applied; waiting for the replay would apply all of the 29 or so left.
	if during := batches.Load() - before; during > 10 {
		t.Fatalf("Close took %v: it waited for %d more applied batches of the replay", time.Since(start), during)
	}
}

// hashicorp/raft answers a Barrier or an Apply queued on its apply channel only while it runs:
// one that races Shutdown may be queued and never answered. A read index taken as Close ran
// (a forwarded read_index, a token check) then waited for good, and Close with it, waiting for
// the forwarder's handlers. Calls under way finish before Raft stops; later ones fail at once.
func TestReadIndexCallsRacingCloseEnd(t *testing.T) {
	for round := 0; round < 5; round++ {
		c := openSingle(t, t.TempDir(), freeAddr(t), nil)
		var answered atomic.Int64
		ended := make(chan struct{}, 4)
		for g := 0; g < 4; g++ {
			go func() {
				defer func() { ended <- struct{}{} }()
				for {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					_, err := c.readIndexLocal(ctx)
					cancel()
					if err != nil {
						return // Close has begun
					}
					answered.Add(1)
				}
			}()
		}
		for answered.Load() < 100 {
			time.Sleep(time.Millisecond)
		}
		closed := make(chan struct{})
		go func() { c.Close(); close(closed) }()
		timeout := time.After(10 * time.Second)
		for g := 0; g < 4; g++ {
			select {
			case <-ended:
			case <-timeout:
				t.Fatalf("round %d: a read index taken as Close ran never returned", round)
			}
		}
		select {
		case <-closed:
		case <-timeout:
			t.Fatalf("round %d: Close never returned", round)
		}
	}
}
