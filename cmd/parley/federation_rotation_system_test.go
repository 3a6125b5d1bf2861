package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/node/client"
)

// TestFederationKeyRotation rotates acme's signing key while a room is shared with globex,
// as docs/federation.md tells an operator to: the peers first accept the new key beside the
// old one (previous_keys), then acme signs with the new key. Nothing is lost on the way:
//   - a message acme signed with the old key while globex was down is still accepted from
//     globex's inbox after both restarted with the new configuration;
//   - messages signed with the new key flow;
//   - initech, joining after the rotation, verifies the room's older events (signed with the
//     old key) in acme's join answer;
//   - acme's key endpoint lists the old key beside the new one.
func TestFederationKeyRotation(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test", "initech.test")
	acme, globex, initech := orgs[0], orgs[1], orgs[2]
	aliceToken, bobToken, carolToken := register(t, acme.node, "alice"), register(t, globex.node, "bob"), register(t, initech.node, "carol")
	alice, bob := dial(t, acme.node, aliceToken), dial(t, globex.node, bobToken)

	room := must(t, alice, client.Frame{"op": "create_room", "alias": "rotation", "visibility": "public"})["room_id"].(string)
	if _, err := alice.Send(ctx(t), room, "old1", "signed with the old key"); err != nil {
		t.Fatal(err)
	}
	must(t, bob, client.Frame{"op": "join", "room": "#rotation:acme.test"})

	// globex goes down; acme signs one more message with the old key, which waits in
	// globex's inbox queue.
	if code := globex.node.stop(); code != 0 {
		t.Fatalf("globex exited %d", code)
	}
	if _, err := alice.Send(ctx(t), room, "old2", "queued under the old key"); err != nil {
		t.Fatal(err)
	}

	// The rotation: a new key for acme; every peer accepts both; acme signs with the new one.
	newKeyFile := filepath.Join(t.TempDir(), "signing-2.key")
	out, err := exec.Command(binary, "keygen", "--out", newKeyFile).Output()
	if err != nil {
		t.Fatal(err)
	}
	newPub := strings.TrimSpace(string(out))
	oldPub := acme.pub
	for _, peer := range []*org{globex, initech} {
		rewriteConfig(t, peer, fmt.Sprintf("{org: acme.test, public_key: %q}", oldPub),
			fmt.Sprintf("{org: acme.test, public_key: %q, previous_keys: [%q]}", newPub, oldPub))
	}
	if code := initech.node.stop(); code != 0 {
		t.Fatalf("initech exited %d", code)
	}
	initech.node.start()
	globex.node.start()
	if code := acme.node.stop(); code != 0 {
		t.Fatalf("acme exited %d", code)
	}
	rewriteConfig(t, acme, fmt.Sprintf("key_file: %q\n", filepath.Join(filepath.Dir(acme.node.dir), "signing.key")),
		fmt.Sprintf("key_file: %q\n  previous_keys: [%q]\n", newKeyFile, oldPub))
	acme.node.start()
	waitLeader(t, acme.node)
	waitLeader(t, globex.node)
	waitLeader(t, initech.node)

	if k := httpGetJSON(t, acme.node.base()+"/v1/federation/key"); k["public_key"] != newPub ||
		fmt.Sprint(k["previous_keys"]) != fmt.Sprintf("[%s]", oldPub) {
		t.Fatalf("acme's key endpoint after the rotation: %v, want %s with previous %s", k, newPub, oldPub)
	}

	// The message queued under the old key reaches globex.
	bob = dial(t, globex.node, bobToken)
	waitHistory(t, bob, room, "queued under the old key")

	// New messages, signed with the new key, flow live.
	alice = dial(t, acme.node, aliceToken)
	if _, err := alice.Send(ctx(t), room, "new1", "signed with the new key"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "signed with the new key")

	// initech joins now: acme's join answer carries events signed with both keys.
	carol := dial(t, initech.node, carolToken)
	must(t, carol, client.Frame{"op": "join", "room": "#rotation:acme.test"})
	var bodies []string
	for _, e := range allEvents(t, carol, room) {
		if e["type"] == "m.room.message" {
			bodies = append(bodies, bodyOf(e))
		}
	}
	if got, want := strings.Join(bodies, "|"), "signed with the old key|queued under the old key|signed with the new key"; got != want {
		t.Fatalf("initech's history after joining: %q, want %q", got, want)
	}
	if _, err := carol.Send(ctx(t), room, "c1", "initech after the rotation"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, alice, "initech after the rotation")
}

// rewriteConfig replaces old with new in the org's config file (written by startOrgs), which
// takes effect at the org's next start.
func rewriteConfig(t *testing.T, o *org, old, new string) {
	t.Helper()
	path := filepath.Join(filepath.Dir(o.node.dir), "parley.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s has no %q:\n%s", path, old, data)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(data), old, new, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitHistory waits until the room's history on c holds a message with this body.
func waitHistory(t *testing.T, c *client.Conn, room, body string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, e := range allEvents(t, c, room) {
			if bodyOf(e) == body {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q never reached the room's history", body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
