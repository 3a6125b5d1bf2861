package consensus

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

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
