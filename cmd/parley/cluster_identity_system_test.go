package main

// The cluster id and staged joins against real nodes (docs/cluster.md, Growing): a node of
// another cluster is refused with both ids, a new node joins as a non-voter and is made a voter
// once caught up, and a data_dir emptied only in part does not bootstrap a new cluster.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/node/client"
)

// startSecretSingle starts a single-node org "sys.test" node with the system tests' secret,
// stopped (its log shown on failure) when the test ends.
func startSecretSingle(t *testing.T, id string, env ...string) *proc {
	t.Helper()
	p := &proc{t: t, id: id, http: freeAddr(t), raft: freeAddr(t), dir: t.TempDir()}
	p.env = append(nodeEnv(p, "sys-secret"), env...)
	p.start()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- log of %s ---\n%s", p.id, p.logs())
		}
	})
	return p
}

var clusterIDRE = regexp.MustCompile(`; cluster ([0-9a-f]{32})\n`)

// clusterIDOf waits until `parley cluster status` against p shows the cluster id, and returns it.
func clusterIDOf(t *testing.T, p *proc) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out := clusterCLI(t, p, "status")
		if m := clusterIDRE.FindStringSubmatch(out); code == 0 && m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s shows no cluster id: exit %d\n%s", p.id, code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// recordedClusterID is what p's data_dir/raft/cluster-id holds.
func recordedClusterID(t *testing.T, p *proc) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.dir, "raft", "cluster-id"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// A node whose data_dir belongs to another cluster (here a follower of a 2-node cluster whose
// other node is down, so it leads nothing) is refused with 409, both cluster ids and what to do,
// and the cluster is left as it was.
func TestClusterJoinRefusesANodeOfAnotherCluster(t *testing.T) {
	a := startSecretSingle(t, "a1")
	waitLeader(t, a)
	ours := clusterIDOf(t, a)

	others := startCluster(t, 2, clusterSpec{})
	waitLeader(t, others...)
	theirs := clusterIDOf(t, others[0])
	if theirs == ours {
		t.Fatalf("two clusters have the same id %s", ours)
	}
	others[0].stop()
	deadline := time.Now().Add(30 * time.Second)
	for getHealth(others[1]).Role == "leader" { // it steps down without its peer
		if time.Now().After(deadline) {
			t.Fatal("n2 still leads without its peer")
		}
		time.Sleep(100 * time.Millisecond)
	}

	code, out := clusterCLI(t, a, "join", "--node-id", "n2", "--raft-addr", others[1].raft)
	if code != 1 {
		t.Fatalf("join a node of another cluster: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"409", "M_INVALID_PARAM", ours, theirs, "empty its data_dir"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
	code, out = clusterCLI(t, a, "status")
	if code != 0 || strings.Count(out, "Voter") != 1 || strings.Contains(out, "n2") {
		t.Fatalf("cluster status after the refusal: exit %d\n%s", code, out)
	}
	if got := recordedClusterID(t, others[1]); got != theirs {
		t.Fatalf("the refused node's data_dir now names cluster %s, was %s", got, theirs)
	}
}

// A node started with cluster.join is added as a non-voter, told the cluster id, and made a
// voter once it has caught up; its status and its data_dir show the cluster's id.
func TestClusterJoinAddsANonvoterThenAVoter(t *testing.T) {
	a := startSecretSingle(t, "a1")
	waitLeader(t, a)
	tok := register(t, a, "alice")
	c := dial(t, a, tok)
	room := must(t, c, client.Frame{"op": "create_room"})["room_id"].(string)
	for i := range 50 {
		if _, err := c.Send(ctx(t), room, fmt.Sprint(i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	id := clusterIDOf(t, a)

	b := &proc{t: t, id: "b2", http: freeAddr(t), raft: freeAddr(t), dir: t.TempDir()}
	b.env = append(nodeEnv(b, "sys-secret"), "PARLEY_CLUSTER_JOIN="+a.http)
	b.start()
	t.Cleanup(func() {
		b.stop()
		if t.Failed() {
			t.Logf("--- log of %s ---\n%s", b.id, b.logs())
		}
	})
	waitLeader(t, a, b)
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out := clusterCLI(t, a, "status")
		if code == 0 && strings.Count(out, "Voter") == 2 && !strings.Contains(out, "Nonvoter") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b2 is not a voter: exit %d\n%s", code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := clusterIDOf(t, b); got != id {
		t.Fatalf("b2 shows cluster id %s, the cluster's is %s", got, id)
	}
	if got := recordedClusterID(t, b); got != id {
		t.Fatalf("b2's data_dir names cluster %s, the cluster's is %s", got, id)
	}
	log := a.logs()
	added := strings.Index(log, "joined the cluster as a non-voter")
	promoted := strings.Index(log, "promoted to voter")
	if added < 0 || promoted < added {
		t.Fatalf("the leader's log does not show b2 added as a non-voter, then promoted:\n%s", log)
	}
	if !strings.Contains(b.logs(), "joined the cluster") {
		t.Fatalf("b2 does not log that it joined:\n%s", b.logs())
	}
}

// A data_dir whose Raft log was removed but whose cluster-id file was left would bootstrap a new
// cluster under the old id: the node refuses to start (exit 1), and says what to do.
func TestANodeWithAnEmptiedLogAndAClusterIDDoesNotStart(t *testing.T) {
	p := startSecretSingle(t, "a1")
	waitLeader(t, p)
	id := clusterIDOf(t, p)
	if code := p.stop(); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}
	for _, sub := range []string{"wal", "snapshots"} {
		if err := os.RemoveAll(filepath.Join(p.dir, "raft", sub)); err != nil {
			t.Fatal(err)
		}
	}
	p.start()
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("the node started:\n%s", p.logs())
	}
	if p.exitCode != 1 || !strings.Contains(p.logs(), id) || !strings.Contains(p.logs(), "empty the whole data_dir") {
		t.Fatalf("exit %d, want 1 with the cluster id and what to do:\n%s", p.exitCode, p.logs())
	}
}

// A node restarted with cluster.join whose data_dir holds a cluster of its own (it was started
// once without it, so it bootstrapped) is refused with 409, and stops with exit 1 saying so.
// Until 2026-12-07 it retried every 5 s for ever while serving clients as that other cluster,
// under the same org name: a split brain.
func TestAJoinerWithAClusterOfItsOwnStops(t *testing.T) {
	a := startSecretSingle(t, "a1")
	waitLeader(t, a)
	b := startSecretSingle(t, "b2")
	waitLeader(t, b)
	b.stop()
	b.env = append(b.env, "PARLEY_CLUSTER_JOIN="+a.http)
	b.start()
	select {
	case <-b.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("b2 still runs, its join refused:\n%s", b.logs())
	}
	if b.exitCode != 1 {
		t.Fatalf("b2 exited %d, want 1", b.exitCode)
	}
	for _, want := range []string{"cluster join refused for good", "409", "belongs to another cluster", "empty its data_dir"} {
		if !strings.Contains(b.logs(), want) {
			t.Errorf("b2's log does not say %q:\n%s", want, b.logs())
		}
	}
	code, out := clusterCLI(t, a, "status")
	if code != 0 || regexp.MustCompile(`(?m)^b2\s`).MatchString(out) { // a row of b2 (the cluster id may hold "b2")
		t.Fatalf("cluster status after the refusal: exit %d\n%s", code, out)
	}
}

// A join refused because another member holds the node's raft address (409 "address") may clear
// up, when that member moves: the node keeps retrying rather than stop, unlike a data_dir of
// another cluster (above).
func TestAJoinerWhoseAddressIsTakenKeepsTrying(t *testing.T) {
	a := startSecretSingle(t, "a1")
	waitLeader(t, a)
	c := &proc{t: t, id: "c3", http: freeAddr(t), raft: freeAddr(t), dir: t.TempDir()}
	c.env = append(nodeEnv(c, "sys-secret"), "PARLEY_CLUSTER_JOIN="+a.http, "PARLEY_CLUSTER_RAFT_ADVERTISE="+a.raft)
	c.start()
	t.Cleanup(func() { c.stop() })
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(c.logs(), "cluster join failed, retrying") < 2 {
		select {
		case <-c.exited:
			t.Fatalf("c3 stopped (exit %d) on a refusal that may clear up:\n%s", c.exitCode, c.logs())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("c3 did not try twice:\n%s", c.logs())
		}
	}
	if !strings.Contains(c.logs(), "409") {
		t.Fatalf("c3 was not refused with 409:\n%s", c.logs())
	}
}
