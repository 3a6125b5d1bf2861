package consensus

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A Raft connection dialed for this node (n1) reaches its Raft stream; one for another node is
// closed, logged naming both ids once per misdirectedLogEvery however often it comes, and so is
// one that names no node (an older build's).
func TestMuxRefusesRaftConnectionsMeantForAnotherNode(t *testing.T) {
	var logs lockedBuffer
	m := startMuxLoggingTo(t, &logs)
	ln := m.ln
	dialer := startTestMux(t, "s3cret").streams[streamRaft]
	addr := raft.ServerAddress(ln.Addr().String())
	dial := func(target raft.ServerAddress) net.Conn {
		t.Helper()
		conn, err := dialer.Dial(target, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := conn.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		return conn
	}
	for range 3 {
		closedWithin(t, dial(raftTarget("n9", addr)), 5*time.Second)
	}
	if n := m.misdirected.Load(); n != 3 {
		t.Fatalf("%d connections counted as misdirected, want 3", n)
	}
	out := logs.from(0)
	if n := strings.Count(out, "meant for another node"); n != 1 || !strings.Contains(out, "node_id=n1 meant_for=n9") {
		t.Fatalf("%d log lines about misdirected connections, want 1 naming node_id=n1 meant_for=n9:\n%s", n, out)
	}
	if _, err := dialer.Dial(addr, time.Second); err == nil {
		t.Fatal("Raft dialed an address that names no node")
	}
	plain, err := startTestMux(t, "s3cret").dial(streamRaft, string(addr), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	closedWithin(t, plain, 5*time.Second)
	if out := logs.from(0); !strings.Contains(out, "names no node") {
		t.Fatalf("a Raft connection naming no node was refused without a log line:\n%s", out)
	}

	dial(raftTarget("n1", addr))
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := m.streams[streamRaft].Accept()
		accepted <- c
	}()
	select {
	case c := <-accepted:
		got := make([]byte, 5)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
			t.Fatalf("Raft read %q (%v), want hello", got, err)
		}
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a connection for this node did not reach Raft")
	}
}

// TestRaftTrafficForAMemberReachesNoOtherNode: a member stops and another node (n9, with the
// cluster secret and an empty data_dir) starts at its Raft address. Raft dials members by
// address, so n9 used to take the member's appends, learning the leader's log and term, and
// its votes: with the leader stopped too, the last member won an election with n9's vote
// counted as the stopped member's. Each Raft connection now names the member it is for, and
// n9 refuses those meant for another id.
func TestRaftTrafficForAMemberReachesNoOtherNode(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := settled(t, cs)
	followers := followersOf(leader, cs)
	gone, voter := followers[0], followers[1]
	seedRoom(t, leader)
	if id, addr := voter.Leader(); id != leader.NodeID() || addr != leader.opts.Advertise {
		t.Fatalf("a follower knows the leader as %s at %q, want %s at %q (the plain address: followers forward to it)",
			id, addr, leader.NodeID(), leader.opts.Advertise)
	}
	if err := gone.Close(); err != nil {
		t.Fatal(err)
	}
	n9, err := Open(Options{NodeID: "n9", DataDir: t.TempDir(), RaftBind: gone.opts.Advertise, Secret: "s3cret",
		HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer n9.Close()

	// refusedMore waits until n9 has refused more Raft connections meant for the stopped member,
	// failing at once if it learned anything from one.
	refusedMore := func(what string, more int64) {
		t.Helper()
		want := n9.mux.misdirected.Load() + more
		deadline := time.Now().Add(10 * time.Second)
		for n9.mux.misdirected.Load() < want {
			if idx, term := n9.raft.LastIndex(), n9.raft.Stats()["term"]; idx != 0 || term != "0" {
				t.Fatalf("%s: n9 took Raft traffic meant for %s: its log is at index %d, term %s", what, gone.NodeID(), idx, term)
			}
			if voter.IsLeader() {
				t.Fatalf("%s: %s leads with a vote of n9 counted as %s's", what, voter.NodeID(), gone.NodeID())
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: n9 refused %d connections meant for %s in 10 s, want %d", what, n9.mux.misdirected.Load(), gone.NodeID(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The leader's heartbeats for the stopped member reach n9, and are refused.
	refusedMore("while the leader runs", 3)
	// With the leader stopped, the last member asks the stopped one's address for a vote at
	// each election; its pre-votes and votes are refused, so it cannot win.
	if err := leader.Close(); err != nil {
		t.Fatal(err)
	}
	refusedMore("with the leader stopped", 5)
	if idx := n9.raft.LastIndex(); idx != 0 {
		t.Fatalf("n9's log is at index %d, want 0", idx)
	}
}
