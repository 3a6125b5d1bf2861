package main

// Federation between orgs on separate brokers, joined by RabbitMQ shovels. Two vhosts of the
// local broker stand in for the two brokers: each org sees only its own vhost, and nothing
// reaches the other side except through the shovels that docs/federation.md documents. The
// test runs the setup script from that document verbatim, so the documented configuration is
// the tested one.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
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

	"github.com/parley-chat/parley/federation"
	"github.com/parley-chat/parley/node/client"
)

const (
	shovelDoc        = "../../docs/federation.md"
	shovelSetupBegin = "<!-- BEGIN shovel-setup"
	shovelSetupEnd   = "<!-- END shovel-setup -->"
)

// shovelSetupScript returns the bash block between the shovel-setup markers of the doc.
func shovelSetupScript(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(shovelDoc)
	if err != nil {
		t.Fatalf("read %s: %v", shovelDoc, err)
	}
	s := string(doc)
	i := strings.Index(s, shovelSetupBegin)
	j := strings.Index(s, shovelSetupEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no %q ... %q block", shovelDoc, shovelSetupBegin, shovelSetupEnd)
	}
	block := s[i:j]
	start := strings.Index(block, "```bash\n")
	end := strings.LastIndex(block, "```")
	if start < 0 || end <= start {
		t.Fatalf("%s: the shovel-setup block holds no ```bash fence", shovelDoc)
	}
	return block[start+len("```bash\n") : end]
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// enableShovelPlugin enables rabbitmq_shovel (idempotent). A broker where it cannot be enabled
// fails the test: the documented configuration would not work there either.
func enableShovelPlugin(t *testing.T) {
	t.Helper()
	if exec.Command("rabbitmq-plugins", "-q", "is_enabled", "rabbitmq_shovel").Run() == nil {
		return
	}
	runCmd(t, "rabbitmq-plugins", "enable", "rabbitmq_shovel")
}

func vhostName(t *testing.T, amqpURL string) string {
	t.Helper()
	u, err := url.Parse(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

// shovelURI is how a shovel reaches vhost on the test broker as user.
func shovelURI(t *testing.T, user, password, vhost string) string {
	t.Helper()
	u, err := url.Parse(brokerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	u.Path = "/" + vhost
	u.RawPath = ""
	return u.String()
}

// startOrgsOn starts one single-node org per name, each on its own broker URL, all peers of
// each other (startOrgs puts every org on one vhost).
func startOrgsOn(t *testing.T, names, urls []string) []*org {
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
	for i, o := range orgs {
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "org: %s\namqp:\n  url: %q\nfederation:\n  key_file: %q\n  peers:\n", o.name, urls[i],
			filepath.Join(filepath.Dir(o.node.dir), "signing.key"))
		for _, peer := range orgs {
			if peer != o {
				fmt.Fprintf(&cfg, "    - {org: %s, public_key: %q}\n", peer.name, peer.pub)
			}
		}
		cfgFile := filepath.Join(filepath.Dir(o.node.dir), "parley.yaml")
		if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		o.node.args = []string{"--config", cfgFile}
		o.node.env = filterEnv(nodeEnv(o.node, ""), "PARLEY_ORG=", "PARLEY_CLUSTER_SECRET=")
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

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, deadline time.Time, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// hasQueue reports whether queue exists in the vhost at amqpURL.
func hasQueue(t *testing.T, amqpURL, queue string) bool {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	return err == nil
}

// shovelsRunning reports whether the named shovel of each vhost is running.
func shovelsRunning(t *testing.T, want map[string]string) bool {
	out, err := exec.Command("rabbitmqctl", "-q", "shovel_status", "--formatter", "json").Output()
	if err != nil {
		return false
	}
	var status []struct {
		Name  string `json:"name"`
		Vhost string `json:"vhost"`
		State string `json:"state"`
	}
	if json.Unmarshal(bytes.TrimSpace(out), &status) != nil {
		return false
	}
	running := 0
	for _, s := range status {
		if name, ok := want[s.Vhost]; ok && s.Name == name && s.State == "running" {
			running++
		}
	}
	return running == len(want)
}

// queueDepth is the number of ready messages in a queue of the vhost at amqpURL.
func queueDepth(t *testing.T, amqpURL, queue string) int {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("queue %s: %v", queue, err)
	}
	return q.Messages
}

// nextPush waits until a push satisfies match.
func nextPush(t *testing.T, c *client.Conn, deadline time.Time, what string, match func(client.Frame) bool) client.Frame {
	t.Helper()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case f, ok := <-c.Pushes():
			if !ok {
				t.Fatalf("connection closed waiting for %s", what)
			}
			if match(f) {
				return f
			}
		case <-timer.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func messageWithBody(body string) func(client.Frame) bool {
	return func(f client.Frame) bool {
		e, _ := f["event"].(map[string]any)
		return f["op"] == "event" && e != nil && bodyOf(e) == body
	}
}

// TestFederationOverShovel: acme.test and globex.test each use their own "broker" (vhost);
// the shovels of docs/federation.md carry transactions, join requests and their replies, and
// typing EDUs between them.
func TestFederationOverShovel(t *testing.T) {
	deadline := time.Now().Add(55 * time.Second)
	enableShovelPlugin(t)
	setup := shovelSetupScript(t)

	urlA, urlB := freshVhost(t), freshVhost(t)
	vhostA, vhostB := vhostName(t, urlA), vhostName(t, urlB)

	// The shovel user of docs/federation.md, on each "broker".
	pw := make([]byte, 12)
	_, _ = rand.Read(pw)
	user, password := "parley-shovel-"+vhostA[len("parley-test-"):], hex.EncodeToString(pw)
	runCmd(t, "rabbitmqctl", "add_user", user, password)
	t.Cleanup(func() { _ = exec.Command("rabbitmqctl", "delete_user", user).Run() })
	for _, v := range []string{vhostA, vhostB} {
		runCmd(t, "rabbitmqctl", "set_permissions", "-p", v, user, `^parley\.shovel\.`, `^parley\.federation$`, `^parley\.shovel\.`)
	}

	// Orgs first: each declares its own inbox on its broker, so nothing shovelled to it is
	// unroutable.
	orgs := startOrgsOn(t, []string{"acme.test", "globex.test"}, []string{urlA, urlB})
	acme, globex := orgs[0], orgs[1]
	waitUntil(t, deadline, "the orgs' inbox queues", func() bool {
		return hasQueue(t, urlA, federation.InboxQueue("acme.test")) && hasQueue(t, urlB, federation.InboxQueue("globex.test"))
	})

	// Each broker gets the documented setup for its peer (both at once: rabbitmqctl is slow).
	uriA, uriB := shovelURI(t, user, password, vhostA), shovelURI(t, user, password, vhostB)
	apply := func(vhost, peer, srcURI, destURI string) error {
		cmd := exec.Command("bash", "-c", setup)
		cmd.Env = append(os.Environ(), "VHOST="+vhost, "PEER_ORG="+peer, "SRC_URI="+srcURI, "DEST_URI="+destURI)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("shovel setup on %s for %s: %v\n%s", vhost, peer, err, out)
		}
		return nil
	}
	errc := make(chan error, 2)
	go func() { errc <- apply(vhostA, "globex.test", uriA, uriB) }()
	go func() { errc <- apply(vhostB, "acme.test", uriB, uriA) }()
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}

	// Setup (plugin, vhosts, shovels) can be slow on a busy machine: the traffic gets its own time.
	deadline = time.Now().Add(45 * time.Second)
	alice := dial(t, acme.node, register(t, acme.node, "alice"))
	bob := dial(t, globex.node, register(t, globex.node, "bob"))
	room := must(t, alice, client.Frame{"op": "create_room", "alias": "shovelled", "visibility": "public"})["room_id"].(string)
	if _, err := alice.Send(ctx(t), room, "early", "before bob"); err != nil {
		t.Fatal(err)
	}

	// Remote join: make_join and send_join requests go to acme, their replies come back to
	// globex, each through a shovel.
	joined := must(t, bob, client.Frame{"op": "join", "room": "#shovelled:acme.test"})
	if joined["room_id"] != room {
		t.Fatalf("bob joined %v, want %s", joined["room_id"], room)
	}
	var history []string
	for _, e := range allEvents(t, bob, room) {
		if e["type"] == "m.room.message" {
			history = append(history, bodyOf(e))
		}
	}
	if strings.Join(history, "|") != "before bob" {
		t.Fatalf("bob's history after the join: %q", history)
	}

	// Transactions both ways.
	if _, err := alice.Send(ctx(t), room, "a1", "to globex"); err != nil {
		t.Fatal(err)
	}
	got := nextPush(t, bob, deadline, "alice's message at globex", messageWithBody("to globex"))
	if got["event"].(map[string]any)["sender"] != "@alice:acme.test" {
		t.Fatalf("bob got %v", got)
	}
	if _, err := bob.Send(ctx(t), room, "b1", "to acme"); err != nil {
		t.Fatal(err)
	}
	nextPush(t, alice, deadline, "bob's message at acme", messageWithBody("to acme"))

	// A typing EDU (transient, with a TTL) crosses too.
	must(t, alice, client.Frame{"op": "typing", "room_id": room, "typing": true})
	nextPush(t, bob, deadline, "alice typing at globex", func(f client.Frame) bool {
		ids, _ := f["user_ids"].([]any)
		return f["op"] == "typing" && f["room_id"] == room && len(ids) == 1 && ids[0] == "@alice:acme.test"
	})

	// The shovels report running, nothing was refused, and the shovel queues drained.
	if !shovelsRunning(t, map[string]string{vhostA: "parley-to-globex.test", vhostB: "parley-to-acme.test"}) {
		out, _ := exec.Command("rabbitmqctl", "shovel_status").CombinedOutput()
		t.Errorf("shovels not both running:\n%s", out)
	}
	waitUntil(t, deadline, "the shovel queues to drain", func() bool {
		return queueDepth(t, urlA, "parley.shovel.globex.test") == 0 && queueDepth(t, urlB, "parley.shovel.acme.test") == 0
	})
	for _, u := range []string{urlA, urlB} {
		if n := queueDepth(t, u, federation.QueueDLQ); n != 0 {
			t.Errorf("%d dead letters on %s", n, vhostName(t, u))
		}
	}
}
