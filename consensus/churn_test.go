package consensus

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Forwarding churn: read indexes forwarded through followers while the leader changes leave
// nothing behind: once calls stop, what a node holds open is its forwarding pool and what the
// other nodes' pools hold to it, however many calls and leader changes came before.

// muxConns is how many cluster connections (accepted and dialed) a node holds open.
func muxConns(c *Cluster) int {
	c.mux.mu.Lock()
	defer c.mux.mu.Unlock()
	return len(c.mux.conns)
}

func servedConns(c *Cluster) int {
	c.fwd.mu.Lock()
	defer c.fwd.mu.Unlock()
	return len(c.fwd.served)
}

func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// forwardChurn makes every node ask for read indexes from 20 goroutines at once (a follower
// forwards each to the leader) while leadership moves, rounds times.
func forwardChurn(t *testing.T, cs []*Cluster, rounds int) {
	t.Helper()
	for range rounds {
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for _, c := range cs {
			for range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
						_ = c.CaughtUp(ctx)
						cancel()
					}
				}()
			}
		}
		time.Sleep(150 * time.Millisecond)
		_ = waitLeader(t, cs...).raft.LeadershipTransfer().Error() // refused at times: fine
		time.Sleep(150 * time.Millisecond)
		close(stop)
		wg.Wait()
	}
}

// heldOpen describes what the nodes hold open once the churn is over, and checks it against
// the pools' bounds.
func heldOpen(t *testing.T, cs []*Cluster) (string, bool) {
	pool := cs[0].opts.MaxInflightBatches + 2
	var b []byte
	ok := true
	for _, c := range cs {
		served := servedConns(c)
		// Each other node pools at most pool connections here (to this node while it led).
		if served > (len(cs)-1)*pool || len(c.fwd.pool) > pool {
			ok = false
		}
		b = fmt.Appendf(b, "%s: %d cluster connections, %d forwarding served, %d pooled; ", c.NodeID(), muxConns(c), served, len(c.fwd.pool))
	}
	return string(b), ok
}

func TestForwardingChurnAcrossLeaderChanges(t *testing.T) {
	cs := openThree(t, "churn secret")
	waitLeader(t, cs...)
	settle := func() (int, int) {
		time.Sleep(time.Second) // the calls' last connections close
		runtime.GC()
		return runtime.NumGoroutine(), openFDs()
	}

	forwardChurn(t, cs, 2)
	g1, fd1 := settle()
	held, ok := heldOpen(t, cs)
	t.Logf("after 2 rounds: %d goroutines, %d fds; %s", g1, fd1, held)
	if !ok {
		t.Fatalf("more forwarding connections held than the pools take: %s", held)
	}

	forwardChurn(t, cs, 4)
	var g2, fd2 int
	deadline := time.Now().Add(5 * time.Second)
	for {
		g2, fd2 = settle()
		// A pool may point at another node than before (the leader moved), so allow for one
		// pool's worth of connections (two ends each) and their goroutines.
		slack := 2 * (cs[0].opts.MaxInflightBatches + 2)
		if g2 <= g1+2*slack && fd2 <= fd1+2*slack {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Logf("%s", buf[:runtime.Stack(buf, true)])
			t.Fatalf("more churn, more held: %d goroutines, %d fds after 2 rounds; %d, %d after 4 more", g1, fd1, g2, fd2)
		}
	}
	held, ok = heldOpen(t, cs)
	t.Logf("after 4 more rounds: %d goroutines, %d fds; %s", g2, fd2, held)
	if !ok {
		t.Fatalf("more forwarding connections held than the pools take: %s", held)
	}
}

// TestAStuckPipelinedAppendEnds: raft's pipelined appends wait for the pipeline's decoder,
// which waits for raft to take each answer; once raft stopped taking them (its decoder ended
// on a refused append, a leadership change) one more append waited forever, and with it the
// leader's replication goroutine and Raft's Shutdown (raftpipeline.go). Over real transports,
// with nobody taking the answers, an append now fails after the stall limit, and Close-time
// closePipelines ends one at once.
func TestAStuckPipelinedAppendEnds(t *testing.T) {
	_, follower := newTCPTransport(t)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() { // the follower answers every append
		for {
			select {
			case rpc := <-follower.Consumer():
				rpc.Respond(&raft.AppendEntriesResponse{Success: true}, nil)
			case <-stop:
				return
			}
		}
	}()
	_, raw := newTCPTransport(t)
	leader := newPipelineTransport(raw)
	leader.stall = 300 * time.Millisecond

	// appendsUntilStuck sends appends on p, whose answers nobody takes, until one does not
	// return within a second; it returns that append's outcome channel.
	appendsUntilStuck := func(p raft.AppendPipeline) chan error {
		for i := 0; i < 10; i++ {
			done := make(chan error, 1)
			go func() {
				_, err := p.AppendEntries(&raft.AppendEntriesRequest{Term: 1}, new(raft.AppendEntriesResponse))
				done <- err
			}()
			select {
			case err := <-done:
				if err != nil {
					return done2(err)
				}
				continue
			case <-time.After(time.Second):
				return done
			}
		}
		t.Fatal("ten appends whose answers nobody took were all handed over")
		return nil
	}

	p, err := leader.AppendEntriesPipeline("f", follower.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-appendsUntilStuck(p):
		if err == nil {
			t.Fatal("the stuck append succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a pipelined append nobody could take waited forever")
	}

	leader.stall = time.Hour // now only closePipelines can end it
	p, err = leader.AppendEntriesPipeline("f", follower.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	stuck := appendsUntilStuck(p)
	leader.closePipelines()
	select {
	case <-stuck:
	case <-time.After(5 * time.Second):
		t.Fatal("closePipelines left a pipelined append waiting")
	}
	if _, err := leader.AppendEntriesPipeline("f", follower.LocalAddr()); err == nil {
		t.Fatal("a pipeline opened after closePipelines")
	}
}

func done2(err error) chan error {
	ch := make(chan error, 1)
	ch <- err
	return ch
}

func newTCPTransport(t *testing.T) (string, *raft.NetworkTransport) {
	t.Helper()
	tr, err := raft.NewTCPTransport("127.0.0.1:0", nil, 3, 10*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return string(tr.LocalAddr()), tr
}
