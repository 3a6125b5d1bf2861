package main

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/parley-chat/parley/node/client"
)

// Chaos tests disturb the shared broker (they close every connection, stop and start it), so
// scripts/test.sh runs them alone, in a serial step, with PARLEY_CHAOS=1.
func chaosOnly(t *testing.T) {
	if os.Getenv("PARLEY_CHAOS") != "1" {
		t.Skip("broker-disrupting test: run by scripts/test.sh in its serial chaos step (PARLEY_CHAOS=1)")
	}
}

func rabbitmqctl(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("rabbitmqctl", args...).CombinedOutput(); err != nil {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}

// TestChaosFederationSurvivesBrokerTrouble sends a steady stream from acme to globex while
// the broker drops every connection and then stops and starts: every message arrives, once.
func TestChaosFederationSurvivesBrokerTrouble(t *testing.T) {
	chaosOnly(t)
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": room})

	const total = 120
	s := &sender{acked: map[string]string{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < total; i++ {
			s.sendUntilAcked(t, func() *client.Conn { return alice }, room, fmt.Sprintf("c%d", i))
			time.Sleep(10 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	rabbitmqctl(t, "close_all_connections", "parley chaos test")
	time.Sleep(500 * time.Millisecond)
	rabbitmqctl(t, "stop_app")
	time.Sleep(time.Second)
	rabbitmqctl(t, "start_app")
	rabbitmqctl(t, "await_startup")
	wg.Wait()

	deadline := time.Now().Add(60 * time.Second)
	for {
		count := map[string]int{}
		for _, e := range allEvents(t, bob, room) {
			if e["type"] == "m.room.message" {
				count[bodyOf(e)]++
			}
		}
		complete := len(count) == total
		for b, n := range count {
			if n != 1 {
				t.Fatalf("%q arrived %d times", b, n)
			}
		}
		if complete {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages arrived", len(count), total)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
