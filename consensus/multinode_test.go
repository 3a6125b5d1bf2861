package consensus

import (
	"io"
	"net"
	"testing"
	"time"
)

func openThree(t *testing.T, secret string) []*Cluster {
	t.Helper()
	return openThreeWith(t, secret, nil)
}

func openThreeWith(t *testing.T, secret string, mutate func(*Options)) []*Cluster {
	t.Helper()
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	peers := []Peer{{"n1", addrs[0]}, {"n2", addrs[1]}, {"n3", addrs[2]}}
	var cs []*Cluster
	for i, p := range peers {
		opts := Options{NodeID: p.ID, DataDir: t.TempDir(), RaftBind: addrs[i], Bootstrap: true, Peers: peers,
			Secret: secret, HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond, Logger: quietLogger()}
		if mutate != nil {
			mutate(&opts)
		}
		c, err := Open(opts)
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

// TestFollowersLearnOfACommitAtOnce: with raft's own commit timeout out of reach, followers
// still apply an entry as soon as it commits, because the leader's commit notifier tells them.
// Without it a follower's read-your-writes proposal would wait for the next entry or for raft's
// timer, which here is a minute away.
func TestFollowersLearnOfACommitAtOnce(t *testing.T) {
	cs := openThreeWith(t, "s3cret", func(o *Options) { o.CommitTimeout = time.Minute })
	leader := waitLeader(t, cs...)
	var followers []*Cluster
	for _, c := range cs {
		if c != leader {
			followers = append(followers, c)
		}
	}
	room := seedRoom(t, followers[0]) // proposed on a follower: answered once it applied them
	for i := 0; i < 5; i++ {
		start := time.Now()
		propose(t, followers[i%2], message(t, room, i))
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("proposal %d took %v", i, d)
		}
	}
	propose(t, leader, message(t, room, 5))
	want := leader.Store().StreamPos()
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range followers {
		for c.Store().StreamPos() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s at %d, want %d: the leader's commit was not passed on", c.NodeID(), c.Store().StreamPos(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
