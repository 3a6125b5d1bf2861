package consensus

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

func openThree(t *testing.T, secret string) []*Cluster {
	t.Helper()
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	peers := []Peer{{"n1", addrs[0]}, {"n2", addrs[1]}, {"n3", addrs[2]}}
	var cs []*Cluster
	for i, p := range peers {
		c, err := Open(Options{NodeID: p.ID, DataDir: t.TempDir(), RaftBind: addrs[i], Bootstrap: true, Peers: peers,
			Secret: secret, HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	t.Cleanup(func() {
		for _, c := range cs {
			c.Close()
		}
	})
	return cs
}

func TestFollowerForwardsAndReadsItsWrite(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := waitLeader(t, cs...)
	var follower *Cluster
	for _, c := range cs {
		if c != leader {
			follower = c
			break
		}
	}
	room := seedRoom(t, follower)
	for i := 0; i < 20; i++ {
		res := propose(t, follower, message(t, room, i))
		// Read-your-writes: the follower has applied the event when Propose returns.
		if _, ok := follower.Store().Event(res.EventID); !ok {
			t.Fatalf("event %d not readable on the follower that accepted it", i)
		}
	}
	want := leader.Store().StreamPos()
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range cs {
		for c.Store().StreamPos() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s at %d, want %d", c.NodeID(), c.Store().StreamPos(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestWrongSecretIsRefused(t *testing.T) {
	cs := openThree(t, "right")
	waitLeader(t, cs...)
	for _, secret := range []string{"wrong", ""} {
		wrong := secretProof(secret)
		conn, err := net.Dial("tcp", cs[0].mux.advertise.String())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write(append([]byte{streamRaft}, wrong[:]...))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("secret %q: connection not closed by the node: %v", secret, err)
		}
		conn.Close()
	}
}

// TestCommitTimingsReachTheirHooks: every node reports each write to its Raft log (the leader
// its own appends, the followers the leader's), and a follower's proposer reports how long it
// waited for its own apply after the leader answered, a part of the whole commit.
func TestCommitTimingsReachTheirHooks(t *testing.T) {
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	peers := []Peer{{"n1", addrs[0]}, {"n2", addrs[1]}, {"n3", addrs[2]}}
	type commit struct{ seconds, applyWait float64 }
	stores := make([]atomic.Int64, len(peers))
	commits := make([]chan commit, len(peers))
	var cs []*Cluster
	for i, p := range peers {
		commits[i] = make(chan commit, 64)
		c, err := Open(Options{NodeID: p.ID, DataDir: t.TempDir(), RaftBind: addrs[i], Bootstrap: true, Peers: peers,
			Secret: "s3cret", HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond, Logger: quietLogger(),
			OnLogStore: func(seconds float64, entries int) {
				if seconds > 0 && entries > 0 {
					stores[i].Add(int64(entries))
				}
			},
			OnCommit: func(seconds, applyWait float64, _ int) { commits[i] <- commit{seconds, applyWait} },
		})
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	leader := waitLeader(t, cs...)
	fi := 0
	for cs[fi] == leader {
		fi++
	}
	before := make([]int64, len(cs))
	for i := range stores {
		before[i] = stores[i].Load()
	}
	room := seedRoom(t, cs[fi])
	const sends = 5
	for i := range sends {
		propose(t, cs[fi], message(t, room, i))
	}
	const commitsMade = 2 + sends // seedRoom proposes two: the user, then the room
	for n := 0; n < commitsMade; n++ {
		select {
		case c := <-commits[fi]:
			if c.applyWait < 0 || c.applyWait > c.seconds {
				t.Fatalf("a follower's commit took %vs, of which %vs waiting for its own apply", c.seconds, c.applyWait)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the follower reported %d of %d commits", n, commitsMade)
		}
	}
	select {
	case c := <-commits[fi]:
		t.Fatalf("the follower reported a commit it did not make (%vs)", c.seconds)
	default:
	}
	deadline := time.Now().Add(5 * time.Second)
	for i, c := range cs {
		// Every entry the follower proposed reached every node's log (plus the leader's own
		// entries, such as its first, which may be counted before "before").
		for stores[i].Load()-before[i] < sends {
			if time.Now().After(deadline) {
				t.Fatalf("%s reported %d entries written to its log, want at least %d", c.NodeID(), stores[i].Load()-before[i], sends)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
