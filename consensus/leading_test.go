package consensus

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/parley-chat/parley/consensus/state"
)

// TestWhileLeadingFollowsLeadership: leader work runs on the leader only, after preparing (which
// is retried until it succeeds), moves with the leadership, and stops when its context ends.
func TestWhileLeadingFollowsLeadership(t *testing.T) {
	cs := openThree(t, "s3cret")
	waitLeader(t, cs...)
	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu       sync.Mutex
		running  = map[string]bool{}
		leads    = map[string]int{}
		prepares = map[string]int{}
		returned sync.WaitGroup
	)
	for _, c := range cs {
		id := c.NodeID()
		returned.Add(1)
		go func() {
			defer returned.Done()
			c.WhileLeading(ctx, quietLogger(), func(context.Context) error {
				mu.Lock()
				defer mu.Unlock()
				prepares[id]++
				if prepares[id] < 3 {
					return errors.New("broker not up yet")
				}
				return nil
			}, func(lctx context.Context) {
				mu.Lock()
				running[id] = true
				leads[id]++
				mu.Unlock()
				<-lctx.Done()
				mu.Lock()
				delete(running, id)
				mu.Unlock()
			})
		}()
	}
	// runningOn waits until exactly the node that leads runs the work.
	runningOn := func() string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			var ids []string
			for id := range running {
				ids = append(ids, id)
			}
			mu.Unlock()
			for _, c := range cs {
				if len(ids) == 1 && ids[0] == c.NodeID() && c.IsLeader() {
					return ids[0]
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("leader work not running on the leader alone: %v", running)
		return ""
	}
	first := runningOn()
	var old *Cluster
	for _, c := range cs {
		if c.NodeID() == first {
			old = c
		}
	}
	if err := old.raft.LeadershipTransfer().Error(); err != nil {
		t.Fatalf("leadership transfer: %v", err)
	}
	second := runningOn()
	if second == first {
		t.Fatalf("work still on %s after it handed over the leadership", first)
	}
	cancel()
	returned.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(running) != 0 {
		t.Fatalf("work still running after the context ended: %v", running)
	}
	for _, c := range cs {
		if prepares[c.NodeID()] < 3 {
			t.Fatalf("%s prepared %d times; it must retry until preparing succeeds", c.NodeID(), prepares[c.NodeID()])
		}
	}
	if leads[first] != 1 || leads[second] != 1 {
		t.Fatalf("lead calls %v, want one each on %s and %s", leads, first, second)
	}
}

// TestLeaderWorkWaitsForTheReplay: after a restart a node leads before it has replayed its log;
// leader work (a federation inbox checking events against the rooms it knows) starts only once
// the node has applied everything committed before it led.
func TestLeaderWorkWaitsForTheReplay(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	c := openSingle(t, dir, addr, nil)
	room := seedRoom(t, c)
	for i := range 640 { // one entry each: ten applied batches of 64 on the replay
		propose(t, c, message(t, room, i))
	}
	want := c.AppliedIndex()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	o := Options{NodeID: "n1", DataDir: dir, RaftBind: addr, Bootstrap: true,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, Logger: quietLogger(),
		Observer: func(*state.Applied) { time.Sleep(50 * time.Millisecond) }} // a replay of half a second
	c, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	atStart := make(chan uint64, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.WhileLeading(ctx, quietLogger(), func(context.Context) error { return nil }, func(lctx context.Context) {
			atStart <- c.AppliedIndex()
			<-lctx.Done()
		})
	}()
	select {
	case got := <-atStart:
		if got < want {
			t.Errorf("leader work started at applied index %d, before the %d committed before the restart", got, want)
		}
	case <-time.After(20 * time.Second):
		t.Error("leader work never started")
	}
	cancel()
	<-done
}

// TestLeaderWorkRestartsAfterALeadershipFlap: a leader that hands over the leadership and wins it
// back between two looks at its role leads in a new term, after another leader may have
// committed entries it has not applied yet: its work is restarted (and so waits for the
// catch-up) rather than carried on as if nothing happened.
func TestLeaderWorkRestartsAfterALeadershipFlap(t *testing.T) {
	cs := openThreeWith(t, func(_ int, o *Options) {
		o.Secret = "s3cret"
		o.leaderCheckInterval = 3 * time.Second // the flap falls between two looks
	})
	first := waitLeader(t, cs...)
	ctx, cancel := context.WithCancel(context.Background())
	var returned sync.WaitGroup
	starts := make(chan uint64, 8) // the term each lead on the first leader started in
	for _, c := range cs {
		returned.Add(1)
		go func() {
			defer returned.Done()
			c.WhileLeading(ctx, quietLogger(), func(context.Context) error { return nil }, func(lctx context.Context) {
				if c == first {
					starts <- c.raft.CurrentTerm()
				}
				<-lctx.Done()
			})
		}()
	}
	defer func() {
		cancel()
		returned.Wait()
	}()
	var term uint64
	select {
	case term = <-starts:
	case <-time.After(10 * time.Second):
		t.Fatal("leader work did not start")
	}
	var second *Cluster
	for _, c := range cs {
		if c != first {
			second = c
			break
		}
	}
	if err := first.raft.LeadershipTransferToServer(raft.ServerID(second.NodeID()), raft.ServerAddress(second.opts.Advertise)).Error(); err != nil {
		t.Fatalf("hand over: %v", err)
	}
	waitLeader(t, second)
	if err := second.raft.LeadershipTransferToServer(raft.ServerID(first.NodeID()), raft.ServerAddress(first.opts.Advertise)).Error(); err != nil {
		t.Fatalf("hand back: %v", err)
	}
	waitLeader(t, first)
	select {
	case again := <-starts:
		if again <= term {
			t.Fatalf("work restarted in term %d, not after %d", again, term)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the work of the first term went on into the new one")
	}
}
