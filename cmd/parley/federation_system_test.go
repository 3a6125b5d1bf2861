package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node/client"
)

// brokerURL is the test broker; the test script finds or starts one and exports it.
func brokerURL(t *testing.T) string {
	u := os.Getenv("PARLEY_TEST_AMQP_URL")
	if u == "" {
		u = "amqp://guest:guest@127.0.0.1:5672/"
	}
	return u
}

// freshVhost makes a vhost for one test and deletes it afterwards; the test fails (never
// skips) when the broker cannot be managed.
func freshVhost(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	vhost := "parley-test-" + base64.RawURLEncoding.EncodeToString(b)
	for _, args := range [][]string{{"add_vhost", vhost}, {"set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"}} {
		if out, err := exec.Command("rabbitmqctl", args...).CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("rabbitmqctl", "delete_vhost", vhost).Run() })
	u, err := url.Parse(brokerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + vhost
	return u.String()
}

type org struct {
	name   string
	node   *proc
	pub    string // ed25519:KEYID:BASE64
	keyRaw *federation.SigningKey
}

// startOrgs starts one single-node org per name, all peers of each other, on one vhost.
func startOrgs(t *testing.T, amqpURL string, names ...string) []*org {
	t.Helper()
	return startOrgsWith(t, amqpURL, nil, names...)
}

// startOrgsWith is startOrgs with more YAML for some orgs' config files (extra, by org name).
func startOrgsWith(t *testing.T, amqpURL string, extra map[string]string, names ...string) []*org {
	t.Helper()
	var orgs []*org
	for _, name := range names {
		dir := t.TempDir()
		keyFile := filepath.Join(dir, "signing.key")
		out, err := exec.Command(binary, "keygen", "--out", keyFile).Output()
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(keyFile)
		key, err := federation.ParseKey(data)
		if err != nil {
			t.Fatal(err)
		}
		p := &proc{t: t, id: name, http: freeAddr(t), raft: freeAddr(t), dir: filepath.Join(dir, "data")}
		orgs = append(orgs, &org{name: name, node: p, pub: strings.TrimSpace(string(out)), keyRaw: key})
	}
	for _, o := range orgs {
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "org: %s\namqp:\n  url: %q\nfederation:\n  key_file: %q\n  peers:\n", o.name, amqpURL,
			filepath.Join(filepath.Dir(o.node.dir), "signing.key"))
		for _, peer := range orgs {
			if peer != o {
				fmt.Fprintf(&cfg, "    - {org: %s, public_key: %q}\n", peer.name, peer.pub)
			}
		}
		cfg.WriteString(extra[o.name])
		cfgFile := filepath.Join(filepath.Dir(o.node.dir), "parley.yaml")
		if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		o.node.args = []string{"--config", cfgFile}
		env := nodeEnv(o.node, "")
		o.node.env = append(env[:0:0], filterEnv(env, "PARLEY_ORG=", "PARLEY_CLUSTER_SECRET=")...)
		o.node.start()
	}
	t.Cleanup(func() {
		for _, o := range orgs {
			o.node.stop()
			if t.Failed() {
				t.Logf("--- log of %s ---\n%s", o.name, o.node.logs())
			}
		}
	})
	for _, o := range orgs {
		waitLeader(t, o.node)
	}
	return orgs
}

func filterEnv(env []string, drop ...string) []string {
	var out []string
next:
	for _, e := range env {
		for _, d := range drop {
			if strings.HasPrefix(e, d) {
				continue next
			}
		}
		out = append(out, e)
	}
	return out
}

func bodyOf(e client.Frame) string {
	c, _ := e["content"].(map[string]any)
	b, _ := c["body"].(string)
	return b
}

// waitBody waits for a pushed message with the given body.
func waitBody(t *testing.T, c *client.Conn, body string) client.Frame {
	t.Helper()
	return waitEvent(t, c, fmt.Sprintf("%q", body), func(e client.Frame) bool { return bodyOf(e) == body })
}

// waitEvent waits for a pushed event matching pred.
func waitEvent(t *testing.T, c *client.Conn, what string, pred func(e client.Frame) bool) client.Frame {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case f, ok := <-c.Pushes():
			if !ok {
				t.Fatal("connection closed")
			}
			if f["op"] == "event" {
				if e := f["event"].(map[string]any); pred(e) {
					return e
				}
			}
		case <-timeout:
			t.Fatalf("%s never arrived", what)
		}
	}
}

func TestFederationTwoOrgsTalk(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "alias": "general", "visibility": "public", "name": "General"})["room_id"].(string)
	for i := 0; i < 3; i++ {
		if _, err := alice.Send(ctx(t), room, fmt.Sprintf("early%d", i), fmt.Sprintf("before bob %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	joined := must(t, bob, client.Frame{"op": "join", "room": "#general:acme.test"})
	if joined["room_id"] != room {
		t.Fatalf("bob joined %v, want %s", joined["room_id"], room)
	}
	// Bob sees history from before he joined.
	var before []string
	for _, e := range allEvents(t, bob, room) {
		if e["type"] == "m.room.message" {
			before = append(before, bodyOf(e))
		}
	}
	if strings.Join(before, "|") != "before bob 0|before bob 1|before bob 2" {
		t.Fatalf("bob's history: %v", before)
	}
	// Both directions, live.
	if _, err := alice.Send(ctx(t), room, "hi", "hello globex"); err != nil {
		t.Fatal(err)
	}
	got := waitBody(t, bob, "hello globex")
	if got["sender"] != "@alice:acme.test" || got["origin"] != "acme.test" {
		t.Fatalf("bob got %v", got)
	}
	if _, err := bob.Send(ctx(t), room, "yo", "hello acme"); err != nil {
		t.Fatal(err)
	}
	seen := waitBody(t, alice, "hello acme")
	// Alice's read marker reaches globex as a receipt EDU.
	must(t, alice, client.Frame{"op": "read", "room_id": room, "event_id": seen["event_id"]})
	receiptDeadline := time.After(20 * time.Second)
receipt:
	for {
		select {
		case f := <-bob.Pushes():
			if f["op"] == "receipt" && f["user_id"] == "@alice:acme.test" && f["event_id"] == seen["event_id"] {
				break receipt
			}
		case <-receiptDeadline:
			t.Fatal("alice's receipt never reached globex")
		}
	}
	// Alice's member list shows bob.
	members := must(t, alice, client.Frame{"op": "members", "room_id": room})["members"].([]any)
	found := false
	for _, m := range members {
		if m.(map[string]any)["user_id"] == "@bob:globex.test" {
			found = true
		}
	}
	if !found {
		t.Fatal("bob is not a member on acme")
	}
	// The federation key endpoint shows the configured key.
	if k := httpGetJSON(t, acme.node.base()+"/v1/federation/key"); k["public_key"] != acme.pub {
		t.Fatalf("key endpoint %v, want %s", k, acme.pub)
	}
}

// amqpChannel opens a channel on the broker at amqpURL for the rest of the test.
func amqpChannel(t *testing.T, amqpURL string) *amqp091.Channel {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func httpGetJSON(t *testing.T, u string) map[string]any {
	t.Helper()
	resp, err := httpClient.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return m
}

// TestFederationRefusesBadInput publishes hostile transactions straight into globex's inbox
// and checks each ends as the contract says, while good traffic keeps flowing.
func TestFederationRefusesBadInput(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	acme, globex := orgs[0], orgs[1]
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "alias": "general", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": room})
	if _, err := alice.Send(ctx(t), room, "w", "warm up"); err != nil {
		t.Fatal(err)
	}
	warm := waitBody(t, bob, "warm up")

	ch := amqpChannel(t, vhost)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publish := func(body []byte) {
		t.Helper()
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx(t), federation.ExchangeFederation, "globex.test", false, false,
			amqp091.Publishing{ContentType: "application/json", DeliveryMode: 2, Type: federation.TypeTxn, Body: body})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(ctx(t)); err != nil || !ok {
			t.Fatalf("publish not confirmed: %v", err)
		}
	}
	// An acme event, correctly signed, for a test to alter.
	mkEvent := func(body, formatted string) *event.Event {
		c := map[string]any{"msgtype": "m.text", "body": body}
		if formatted != "" {
			c["format"] = "org.matrix.custom.html"
			c["formatted_body"] = formatted
		}
		raw, _ := event.CanonicalValue(c)
		e := &event.Event{RoomID: room, Sender: "@alice:acme.test", Origin: "acme.test", OriginTS: time.Now().UnixMilli(),
			Type: "m.room.message", Content: raw, PrevEvents: []string{warm["event_id"].(string)}, Depth: 10}
		if err := event.Seal(e); err != nil {
			t.Fatal(err)
		}
		if err := event.Sign(e, "acme.test", "ed25519:"+acme.keyRaw.KeyID, acme.keyRaw.Private); err != nil {
			t.Fatal(err)
		}
		return e
	}
	txn := func(origin, dest string, key *federation.SigningKey, pdus ...*event.Event) []byte {
		body, err := federation.EncodeSignedTransaction(origin, dest, "t-"+randomSuffix(), key, pdus)
		if err != nil {
			t.Fatal(err)
		}
		return body
	}
	_, forgedPriv, _ := ed25519.GenerateKey(rand.Reader)
	forger := &federation.SigningKey{KeyID: acme.keyRaw.KeyID, Private: forgedPriv}

	good := mkEvent("a good one", "")
	publish(txn("acme.test", "globex.test", forger, mkEvent("forged", "")))                     // forged signature
	publish(txn("evil.test", "globex.test", acme.keyRaw, mkEvent("unknown origin", "")))        // unknown origin
	publish(txn("acme.test", "initech.test", acme.keyRaw, mkEvent("wrong destination", "")))    // wrong destination
	publish([]byte(`{"type":"parley.txn.v1","txn_id":`))                                        // malformed
	publish(append([]byte(`{"pad":"`), append([]byte(strings.Repeat("x", 1<<20)), `"}`...)...)) // oversized
	spoof := mkEvent("spoofed sender", "")
	spoof.Sender = "@bob:globex.test"
	_ = event.Seal(spoof)
	spoof.Signatures = nil
	_ = event.Sign(spoof, "acme.test", "ed25519:"+acme.keyRaw.KeyID, acme.keyRaw.Private)
	xss := mkEvent("<script>window.__pwned=1</script>", "<img src=x onerror=alert(1)><b>hi</b>")
	// One transaction: a spoofed sender and an unsanitized payload are dropped, the good event applied.
	goodTxn := txn("acme.test", "globex.test", acme.keyRaw, spoof, xss, good)
	publish(goodTxn)
	publish(goodTxn) // replayed: applied once

	waitBody(t, bob, "a good one")
	dlq := drainDLQ(t, ch, 5)
	want := []string{"M_FORBIDDEN: bad signature", "M_FORBIDDEN: unknown origin", "M_FORBIDDEN: wrong destination", "M_BAD_JSON", "M_TOO_LARGE"}
	for _, w := range want {
		found := false
		for _, reason := range dlq {
			if strings.HasPrefix(reason, w) {
				found = true
			}
		}
		if !found {
			t.Errorf("no dead letter %q among %q", w, dlq)
		}
	}
	count := map[string]int{}
	for _, e := range allEvents(t, bob, room) {
		count[bodyOf(e)]++
	}
	for _, bad := range []string{"forged", "unknown origin", "wrong destination", "spoofed sender", "<script>window.__pwned=1</script>"} {
		if count[bad] != 0 {
			t.Errorf("%q got into the room", bad)
		}
	}
	if count["a good one"] != 1 {
		t.Errorf("the good event is there %d times", count["a good one"])
	}
	// Good traffic still flows.
	if _, err := alice.Send(ctx(t), room, "after", "after the storm"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "after the storm")
}

var httpClient = &httpClientT{}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// drainDLQ reads at least n dead letters (bounded in time) and returns their reasons.
func drainDLQ(t *testing.T, ch *amqp091.Channel, n int) []string {
	t.Helper()
	var reasons []string
	deadline := time.Now().Add(20 * time.Second)
	for len(reasons) < n && time.Now().Before(deadline) {
		d, ok, err := ch.Get(federation.QueueDLQ, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		reason, _ := d.Headers["x-parley-error"].(string)
		reasons = append(reasons, reason)
	}
	return reasons
}

var _ = context.Background

// TestFederationThreeOrgs: the home org passes on each org's events to the others, and typing
// crosses orgs as an EDU.
func TestFederationThreeOrgs(t *testing.T) {
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test", "initech.test")
	alice := dial(t, orgs[0].node, register(t, orgs[0].node, "alice"))
	bob := dial(t, orgs[1].node, register(t, orgs[1].node, "bob"))
	carol := dial(t, orgs[2].node, register(t, orgs[2].node, "carol"))
	room := must(t, alice, client.Frame{"op": "create_room", "alias": "three", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": "#three:acme.test"})
	must(t, carol, client.Frame{"op": "join", "room": "#three:acme.test"})
	if _, err := carol.Send(ctx(t), room, "c1", "carol to all"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, alice, "carol to all")
	waitBody(t, bob, "carol to all")
	if _, err := bob.Send(ctx(t), room, "b1", "bob to all"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, alice, "bob to all")
	waitBody(t, carol, "bob to all")
	must(t, alice, client.Frame{"op": "typing", "room_id": room, "typing": true})
	timeout := time.After(20 * time.Second)
	for {
		select {
		case f := <-bob.Pushes():
			if f["op"] == "typing" && f["room_id"] == room {
				if ids, _ := f["user_ids"].([]any); len(ids) == 1 && ids[0] == "@alice:acme.test" {
					return
				}
			}
		case <-timeout:
			t.Fatal("alice's typing never reached globex")
		}
	}
}

// TestFederationLeaderKilledMidRelay: acme runs 3 nodes; its leader is killed with kill -9
// while acme sends to globex. The new leader resumes from the relay cursor in the Raft log:
// every message arrives at globex, once.
func TestFederationLeaderKilledMidRelay(t *testing.T) {
	leaderKilledMidFederation(t, true)
}

// leaderKilledMidFederation runs two orgs, one of 3 nodes (acme when the sender's org is
// clustered, else globex) and one of one node; alice of acme sends 150 messages to bob of
// globex, each until acked, and the 3-node org's leader is killed with kill -9 while she
// does. Every message must reach bob, once.
func leaderKilledMidFederation(t *testing.T, senderClustered bool) {
	vhost := freshVhost(t)
	dir := t.TempDir()
	pubs := map[string]string{}
	for _, org := range []string{"acme.test", "globex.test"} {
		k, err := federation.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		pubs[org] = k.PublicKeyString()
		if err := federation.WriteNewKeyFile(filepath.Join(dir, org+".key"), k); err != nil {
			t.Fatal(err)
		}
	}
	fedYAML := func(self, peer string) string {
		return fmt.Sprintf("amqp:\n  url: %q\nfederation:\n  key_file: %q\n  peers:\n    - {org: %s, public_key: %q}\n",
			vhost, filepath.Join(dir, self+".key"), peer, pubs[peer])
	}
	clustered, lone := "globex.test", "acme.test"
	if senderClustered {
		clustered, lone = lone, clustered
	}
	cluster := startClusterWith(t, 3, fedYAML(clustered, lone), func(_ int, p *proc) {
		p.env = append(filterEnv(nodeEnv(p, "sys-secret"), "PARLEY_ORG="), "PARLEY_ORG="+clustered)
	})
	leader := waitLeader(t, cluster...)
	single := &proc{t: t, id: strings.TrimSuffix(lone, ".test"), http: freeAddr(t), raft: freeAddr(t), dir: t.TempDir()}
	cfg := filepath.Join(dir, single.id+".yaml")
	if err := os.WriteFile(cfg, []byte("org: "+lone+"\n"+fedYAML(lone, clustered)), 0o600); err != nil {
		t.Fatal(err)
	}
	single.args = []string{"--config", cfg}
	single.env = filterEnv(nodeEnv(single, ""), "PARLEY_ORG=", "PARLEY_CLUSTER_SECRET=")
	single.start()
	t.Cleanup(func() {
		single.stop()
		if t.Failed() {
			t.Logf("--- log of %s ---\n%s", single.id, single.logs())
		}
	})
	waitLeader(t, single)

	var follower *proc
	for _, p := range cluster {
		if p != leader {
			follower = p
			break
		}
	}
	acme, globex := follower, single // alice on a follower: her sends take the forwarded path
	if !senderClustered {
		acme, globex = single, follower
	}
	alice := dial(t, acme, register(t, acme, "alice"))
	bob := dial(t, globex, register(t, globex, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": room})

	const total = 150
	s := &sender{acked: map[string]string{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < total; i++ {
			s.sendUntilAcked(t, func() *client.Conn { return alice }, room, fmt.Sprintf("k%d", i))
		}
	}()
	time.Sleep(400 * time.Millisecond)
	leader.kill9()
	<-done
	deadline := time.Now().Add(60 * time.Second)
	for {
		count := map[string]int{}
		for _, e := range allEvents(t, bob, room) {
			if e["type"] == "m.room.message" {
				count[bodyOf(e)]++
			}
		}
		for b, n := range count {
			if n != 1 {
				t.Fatalf("%q arrived %d times", b, n)
			}
		}
		if len(count) == total {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages reached globex", len(count), total)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestFederationGapRepairedByGetMissingEvents: a transaction is lost (the broker's queue is
// purged while globex is down); the next event names the lost one in prev_events, and globex
// fetches it from acme with get_missing_events before applying it.
func TestFederationGapRepairedByGetMissingEvents(t *testing.T) {
	g := startGapRoom(t)
	globex, alice, room, vh := g.globex, g.alice, g.room, g.vhost
	if _, err := alice.Send(ctx(t), room, "g1", "lost in transit"); err != nil {
		t.Fatal(err)
	}
	// Wait until acme's relay has handed it to the broker, then lose it there.
	waitQueued(t, vh, "parley.fed.globex.test", 1)
	rabbitmqctl(t, "purge_queue", "-p", vh, "parley.fed.globex.test")
	globex.node.start()
	waitLeader(t, globex.node)
	bob := dial(t, globex.node, g.bobToken)
	if _, err := alice.Send(ctx(t), room, "g2", "after the gap"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, bob, room, "before the gap|lost in transit|after the gap", 30*time.Second)
}

// TestFederationGapRepairWaitsForTheSender: the transactions after a lost one reach globex
// while acme, the only org that can repair the gap, is down. globex asks for them again rather
// than apply them with the gap (until 2026-12-07 it applied them, and the lost message never
// came), and repairs the gap once acme is back. The transactions behind the first, which build
// on it, share its wait: acme is asked once, not once per transaction, 10 s each (a review
// found three transactions holding globex's inbox for two minutes).
func TestFederationGapRepairWaitsForTheSender(t *testing.T) {
	g := startGapRoom(t)
	acme, globex, alice, room, vh := g.acme, g.globex, g.alice, g.room, g.vhost
	if _, err := alice.Send(ctx(t), room, "g1", "lost in transit"); err != nil {
		t.Fatal(err)
	}
	waitQueued(t, vh, "parley.fed.globex.test", 1)
	rabbitmqctl(t, "purge_queue", "-p", vh, "parley.fed.globex.test")
	for i, body := range []string{"after the gap", "and more", "and more still"} {
		if _, err := alice.Send(ctx(t), room, fmt.Sprintf("g%d", i+2), body); err != nil {
			t.Fatal(err)
		}
		waitQueued(t, vh, "parley.fed.globex.test", i+1) // one transaction each
	}
	if code := acme.node.stop(); code != 0 {
		t.Fatalf("acme exited %d", code)
	}
	globex.node.start()
	waitLeader(t, globex.node)
	// globex's first get_missing_events waits 10 s for acme, in vain; then the three
	// transactions go round the queue without asking acme again each time.
	deadline := time.Now().Add(40 * time.Second)
	for strings.Count(globex.node.logs(), "missing events not fetched, requeueing") < 4 { // each once, and one again
		if time.Now().After(deadline) {
			t.Fatalf("globex did not requeue the transactions with the gap:\n%s", globex.node.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := strings.Count(globex.node.logs(), "could not fetch missing events"); n > 1 {
		t.Fatalf("acme was asked %d times, 10 s each, while the transactions went round", n)
	}
	acme.node.start()
	waitLeader(t, acme.node)
	bob := dial(t, globex.node, g.bobToken)
	waitMessages(t, bob, room, "before the gap|lost in transit|after the gap|and more|and more still", 60*time.Second)
}

// gapRoom is the start of the gap tests: acme's room with alice, bob of globex joined, one
// message delivered, and globex stopped.
type gapRoom struct {
	acme, globex *org
	alice        *client.Conn
	bobToken     string
	room, vhost  string // vhost is the broker's vhost name, for rabbitmqctl
}

func startGapRoom(t *testing.T) gapRoom {
	t.Helper()
	vhost := freshVhost(t)
	orgs := startOrgs(t, vhost, "acme.test", "globex.test")
	g := gapRoom{acme: orgs[0], globex: orgs[1], vhost: vhostName(t, vhost)}
	g.alice = dial(t, g.acme.node, register(t, g.acme.node, "alice"))
	g.bobToken = register(t, g.globex.node, "bob")
	bob := dial(t, g.globex.node, g.bobToken)
	g.room = must(t, g.alice, client.Frame{"op": "create_room", "visibility": "public"})["room_id"].(string)
	must(t, bob, client.Frame{"op": "join", "room": g.room})
	if _, err := g.alice.Send(ctx(t), g.room, "g0", "before the gap"); err != nil {
		t.Fatal(err)
	}
	waitBody(t, bob, "before the gap")
	// acme relays bob's join back to globex too; when that copy beats globex's own commit of the
	// join, globex requeues it for a moment. Stop globex only once its queue is drained, so the
	// tests count only what acme sends next (CI once found the requeued join still queued).
	waitQueued(t, g.vhost, "parley.fed.globex.test", 0)
	if code := g.globex.node.stop(); code != 0 {
		t.Fatalf("globex exited %d", code)
	}
	return g
}

// waitQueued waits until queue in vhost holds n messages.
func waitQueued(t *testing.T, vhost, queue string, n int) {
	t.Helper()
	want := fmt.Sprintf(`"name":%q,"messages":%d`, queue, n)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := exec.Command("rabbitmqctl", "list_queues", "-p", vhost, "name", "messages", "--formatter", "json").Output()
		if err == nil && strings.Contains(string(out), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never held %d messages: %s", queue, n, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitMessages waits until the room's messages, as c pages them, are want ("|"-joined bodies),
// each stored by c's org: history also shows the home org's events across a gap (backfill,
// without a stream_pos), which are marked "(not stored)".
func waitMessages(t *testing.T, c *client.Conn, room, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var bodies []string
		for _, e := range allEvents(t, c, room) {
			if e["type"] == "m.room.message" {
				b := bodyOf(e)
				if _, stored := e["stream_pos"]; !stored {
					b += " (not stored)"
				}
				bodies = append(bodies, b)
			}
		}
		got := strings.Join(bodies, "|")
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("history: %q, want %q", got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
