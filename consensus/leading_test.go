package consensus

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
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
