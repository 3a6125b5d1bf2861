package federation

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/loopback"
	"github.com/parley-chat/parley/consensus/state"
)

// A harness of orgs in one process: each org is a single-node cluster (a real Raft log and
// state machine) with its federation service, all on one fresh vhost of the real broker.

// testBrokerURL is the broker the tests use (PARLEY_TEST_AMQP_URL, or the local one).
func testBrokerURL() string {
	if u := os.Getenv("PARLEY_TEST_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// testVhost makes a vhost for one test and deletes it afterwards; the test fails (never skips)
// when the broker cannot be managed.
func testVhost(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	vhost := "parley-fedtest-" + base64.RawURLEncoding.EncodeToString(b)
	for _, args := range [][]string{{"add_vhost", vhost}, {"set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"}} {
		if out, err := exec.Command("rabbitmqctl", args...).CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("rabbitmqctl", "delete_vhost", vhost).Run() })
	u, err := url.Parse(testBrokerURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + vhost
	return u.String()
}

type testOrg struct {
	name    string
	key     *SigningKey
	cluster *consensus.Cluster
	svc     *Service

	mu       sync.Mutex
	receipts []state.Receipt // committed, in order (the cluster's observer)
}

// committedReceipts lists the receipts committed on o so far.
func (o *testOrg) committedReceipts() []state.Receipt {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]state.Receipt(nil), o.receipts...)
}

func (o *testOrg) store() *state.Store { return o.cluster.Store() }

// startTestOrgs starts one org per name, each a peer of all others, on amqpURL.
func startTestOrgs(t *testing.T, amqpURL string, names ...string) map[string]*testOrg {
	t.Helper()
	return startTestOrgsWith(t, amqpURL, nil, names...)
}

// startTestOrgsWith is startTestOrgs with each org's options changed by mutate (if not nil).
func startTestOrgsWith(t *testing.T, amqpURL string, mutate func(*Options), names ...string) map[string]*testOrg {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	orgs := map[string]*testOrg{}
	for _, n := range names {
		k, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		orgs[n] = &testOrg{name: n, key: k}
	}
	for _, n := range names {
		o := orgs[n]
		c, err := consensus.Open(consensus.Options{NodeID: "n1", DataDir: t.TempDir(), RaftBind: loopback.FreeAddr(t), Bootstrap: true,
			HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, Logger: quiet,
			Observer: func(a *state.Applied) {
				o.mu.Lock()
				defer o.mu.Unlock()
				for _, r := range a.Receipts {
					o.receipts = append(o.receipts, r.Receipt)
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		o.cluster = c
		t.Cleanup(func() { _ = c.Close() })
		waitFor(t, 10*time.Second, n+"'s leader", c.IsLeader)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = c.CaughtUp(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		peers := map[string]PeerKey{}
		for _, p := range names {
			if p != n {
				peers[p] = PeerKey{KeyID: orgs[p].key.KeyID, Public: orgs[p].key.Private.Public().(ed25519.PublicKey)}
			}
		}
		logger := quiet
		if testing.Verbose() {
			logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("org", n)
		}
		opts := Options{Org: n, Cluster: c, Keys: &Keys{file: o.key}, AMQPURL: amqpURL, Peers: peers, Logger: logger}
		if mutate != nil {
			mutate(&opts)
		}
		svc, err := Start(opts)
		if err != nil {
			t.Fatal(err)
		}
		o.svc = svc
		t.Cleanup(svc.Close)
	}
	// Both inboxes consume once their leaders have declared the topology.
	for _, o := range orgs {
		waitFor(t, 15*time.Second, o.name+" consuming its inbox", func() bool { return inboxConsumed(o) })
	}
	return orgs
}

// inboxConsumed reports whether org's inbox queue has a consumer.
func inboxConsumed(o *testOrg) bool {
	ch, err := o.svc.conn.Channel(context.Background())
	if err != nil {
		return false
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(InboxQueue(o.name), true, false, false, false, nil)
	return err == nil && q.Consumers > 0
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// commit proposes cmds on o and fails the test on any error or refusal.
func (o *testOrg) commit(t *testing.T, cmds ...*state.Command) []state.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := o.cluster.ProposeBatch(ctx, cmds)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !r.OK() {
			t.Fatalf("%s: command %d (%s) refused: %s %s", o.name, i, cmds[i].Kind, r.Code, r.Message)
		}
	}
	return res
}

// register makes an account on o.
func (o *testOrg) register(t *testing.T, user string) {
	t.Helper()
	o.commit(t, &state.Command{Kind: state.KindRegister, Register: &state.Register{UserID: user, TokenHash: "tok-" + user,
		CreatedTS: time.Now().UnixMilli()}})
}

// newEvent builds a sealed event of o's on room's latest event, as a node does.
func (o *testOrg) newEvent(t *testing.T, room *state.Room, sender, typ string, stateKey *string, content any) *event.Event {
	t.Helper()
	raw, err := event.CanonicalValue(content)
	if err != nil {
		t.Fatal(err)
	}
	e := &event.Event{RoomID: room.RoomID, Sender: sender, Origin: o.name, OriginTS: time.Now().UnixMilli(),
		Type: typ, StateKey: stateKey, Content: raw, PrevEvents: []string{}, Depth: room.Depth + 1}
	if room.LastEventID != "" {
		e.PrevEvents = []string{room.LastEventID}
	}
	if err := event.Seal(e); err != nil {
		t.Fatal(err)
	}
	return e
}

// createRoom makes a federating room of o's, created by creator.
func (o *testOrg) createRoom(t *testing.T, creator, visibility string) string {
	t.Helper()
	b := make([]byte, 9)
	_, _ = rand.Read(b)
	room := &state.Room{RoomID: "!" + base64.RawURLEncoding.EncodeToString(b) + ":" + o.name}
	var events []*event.Event
	for _, st := range []struct {
		typ, key string
		body     any
	}{
		{"m.room.create", "", state.CreateContent{Creator: creator, Visibility: visibility, Federate: true}},
		{"m.room.member", creator, map[string]string{"membership": state.Join}},
		{"m.room.power_levels", "", state.DefaultPowerLevels(creator)},
	} {
		k := st.key
		e := o.newEvent(t, room, creator, st.typ, &k, st.body)
		room.LastEventID, room.Depth = e.EventID, e.Depth
		events = append(events, e)
	}
	o.commit(t, &state.Command{Kind: state.KindCreateRoom, CreateRoom: &state.CreateRoom{RoomID: room.RoomID, Events: events}})
	return room.RoomID
}

// send commits an event of sender in o's copy of roomID and returns it.
func (o *testOrg) send(t *testing.T, roomID, sender, typ string, stateKey *string, content any) *event.Event {
	t.Helper()
	room, ok := o.store().Room(roomID)
	if !ok {
		t.Fatalf("%s does not know %s", o.name, roomID)
	}
	e := o.newEvent(t, room, sender, typ, stateKey, content)
	o.commit(t, &state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: e}})
	return e
}

func (o *testOrg) membership(roomID, user string) string {
	return o.store().Membership(roomID, user).Membership
}

func (o *testOrg) has(eventID string) bool {
	_, ok := o.store().Event(eventID)
	return ok
}

// joinAnswerLost does the requesting half of Join for user of o: make_join and send_join to the
// room's home org, which commits the join; its answer is then dropped, never committed here, as
// when it arrives after o stopped waiting or o's leader changes before committing it.
func (o *testOrg) joinAnswerLost(t *testing.T, user, roomID string) *event.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	home := roomOrg(roomID)
	var tmpl makeJoinResult
	if err := o.svc.call(ctx, home, "make_join", makeJoinParams{Room: roomID, UserID: user}, &tmpl); err != nil {
		t.Fatal(err)
	}
	k := user
	join := &event.Event{RoomID: tmpl.RoomID, Sender: user, Origin: o.name, OriginTS: time.Now().UnixMilli(),
		Type: "m.room.member", StateKey: &k, Content: json.RawMessage(`{"membership":"join"}`),
		PrevEvents: tmpl.PrevEvents, Depth: tmpl.Depth}
	if err := event.Seal(join); err != nil {
		t.Fatal(err)
	}
	if err := o.svc.opts.Keys.Sign(join, o.name); err != nil {
		t.Fatal(err)
	}
	var lost sendJoinResult
	if err := o.svc.call(ctx, home, "send_join", sendJoinParams{Event: join}, &lost); err != nil {
		t.Fatal(err)
	}
	return join
}
