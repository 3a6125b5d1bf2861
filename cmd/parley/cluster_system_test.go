package main

// parley cluster join/remove against real nodes: what is refused, with which answer, and that
// a refusal changes nothing.

import (
	"strings"
	"testing"
	"time"
)

// clusterCLI runs `parley cluster ARGS --addr p --secret sys-secret`.
func clusterCLI(t *testing.T, p *proc, args ...string) (int, string) {
	t.Helper()
	args = append(append([]string{"cluster"}, args...), "--addr", p.http, "--secret", "sys-secret")
	return runParley(t, t.TempDir(), nil, args...)
}

func TestClusterJoinAndRemoveRefuseWithoutChangingAnything(t *testing.T) {
	nodes := startCluster(t, 3, clusterSpec{})
	leader := waitLeader(t, nodes...)
	follower := nodes[0]
	if follower == leader {
		follower = nodes[1]
	}
	deadline := time.Now().Add(10 * time.Second)
	for getHealth(follower).Leader != leader.id { // the follower forwards to the leader it knows
		if time.Now().After(deadline) {
			t.Fatalf("%s does not know the leader", follower.id)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		// A typo in remove used to answer ok, and change nothing.
		{"remove an unknown id", []string{"remove", "--node-id", "n9"}, []string{"404", "M_NOT_FOUND", "n9"}},
		// The leader's id with a wrong address used to remove the leader: 2 members were left.
		{"join the leader's id at a wrong address", []string{"join", "--node-id", leader.id, "--raft-addr", freeAddr(t)},
			[]string{"409", "M_INVALID_PARAM", leader.raft}},
		// A new id at a member's address used to remove that member.
		{"join a new id at a member's address", []string{"join", "--node-id", "n4", "--raft-addr", follower.raft},
			[]string{"409", "M_INVALID_PARAM", follower.id}},
		// Addresses nobody can dial used to become voters (a quorum that could never be met).
		{"join at 0.0.0.0", []string{"join", "--node-id", "n4", "--raft-addr", "0.0.0.0:7000"}, []string{"400", "M_INVALID_PARAM"}},
		{"join without a host", []string{"join", "--node-id", "n4", "--raft-addr", ":7000"}, []string{"400", "M_INVALID_PARAM"}},
		{"join at port 0", []string{"join", "--node-id", "n4", "--raft-addr", "127.0.0.1:0"}, []string{"400", "M_INVALID_PARAM"}},
		{"join at a port name", []string{"join", "--node-id", "n4", "--raft-addr", "127.0.0.1:abc"}, []string{"400", "M_INVALID_PARAM"}},
		// A voter that does not answer counts toward the quorum from the moment it is added.
		{"join a node that is not running", []string{"join", "--node-id", "n4", "--raft-addr", freeAddr(t)},
			[]string{"503", "M_UNAVAILABLE", "does not answer"}},
	} {
		code, out := clusterCLI(t, follower, tc.args...)
		if code != 1 {
			t.Errorf("%s: exit %d, want 1\n%s", tc.name, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output does not contain %q:\n%s", tc.name, w, out)
			}
		}
	}
	code, out := clusterCLI(t, leader, "status")
	if code != 0 || strings.Count(out, "Voter") != 3 || strings.Contains(out, "n4") || strings.Contains(out, "n9") {
		t.Fatalf("cluster status after the refusals: exit %d\n%s", code, out)
	}
	if h := getHealth(follower); h.Leader != leader.id {
		t.Fatalf("leader is now %q, was %s", h.Leader, leader.id)
	}
}

// A single node restarted at a new Raft address still lists its old one; joining it at the new
// address (docs/cluster.md, Growing) repairs that.
func TestClusterJoinMovesASingleNode(t *testing.T) {
	p := &proc{t: t, id: "n1", http: freeAddr(t), raft: freeAddr(t), dir: t.TempDir()}
	p.env = nodeEnv(p, "sys-secret")
	p.start()
	t.Cleanup(func() { p.stop() })
	waitLeader(t, p)
	p.stop()
	p.raft = freeAddr(t)
	p.env = nodeEnv(p, "sys-secret")
	p.start()
	waitLeader(t, p)
	if code, out := clusterCLI(t, p, "join", "--node-id", "n1", "--raft-addr", p.raft); code != 0 {
		t.Fatalf("join n1 at its new address: exit %d\n%s", code, out)
	}
	code, out := clusterCLI(t, p, "status")
	if code != 0 || !strings.Contains(out, p.raft) || strings.Count(out, "Voter") != 1 {
		t.Fatalf("cluster status: exit %d\n%s", code, out)
	}
}
