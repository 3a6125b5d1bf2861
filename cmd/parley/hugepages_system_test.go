package main

import (
	"strings"
	"testing"

	"github.com/parley-chat/parley/node/client"
)

// TestClusterWithHugePages: with memory.huge_pages on, every node says at start what it got
// (huge pages, or ordinary ones where the kernel will not give them) and the cluster commits and
// pushes as without.
func TestClusterWithHugePages(t *testing.T) {
	nodes := startCluster(t, 3, clusterSpec{extra: []string{"PARLEY_MEMORY_HUGE_PAGES=true"}})
	waitLeader(t, nodes...)
	for _, p := range nodes {
		logs := p.logs()
		if !strings.Contains(logs, "heap growth backed by transparent huge pages") && !strings.Contains(logs, "heap stays on ordinary pages") {
			t.Fatalf("%s did not log what became of memory.huge_pages:\n%s", p.id, logs)
		}
	}
	a := dial(t, nodes[0], register(t, nodes[0], "hp1"))
	b := dial(t, nodes[2], register(t, nodes[2], "hp2"))
	room := must(t, a, client.Frame{"op": "create_room", "visibility": "public", "alias": "hp"})["room_id"].(string)
	must(t, b, client.Frame{"op": "join", "room": "#hp:sys.test"})
	if _, err := a.Send(ctx(t), room, "t1", "on huge pages"); err != nil {
		t.Fatal(err)
	}
	if got := nextMessage(t, b)["content"].(map[string]any)["body"]; got != "on huge pages" {
		t.Fatalf("pushed %v", got)
	}
}
