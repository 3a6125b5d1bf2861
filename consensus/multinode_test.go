package consensus

import (
	"io"
	"net"
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
