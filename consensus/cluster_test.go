package consensus

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/loopback"
	"github.com/parley-chat/parley/consensus/state"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func freeAddr(t testing.TB) string { return loopback.FreeAddr(t) }

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

func openSingle(t testing.TB, dir, addr string, mutate func(*Options)) *Cluster {
	t.Helper()
	opts := Options{NodeID: "n1", DataDir: dir, RaftBind: addr, Bootstrap: true,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, Logger: quietLogger()}
	if mutate != nil {
		mutate(&opts)
	}
	c, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, c)
	// A restarted node applies the log after its snapshot only once it knows the commit index.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.CaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func waitLeader(t testing.TB, cs ...*Cluster) *Cluster {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, c := range cs {
			if c.IsLeader() {
				return c
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no leader")
	return nil
}

func propose(t testing.TB, c *Cluster, cmd *state.Command) state.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Propose(ctx, cmd)
	if err != nil {
		t.Fatalf("propose %s: %v", cmd.Kind, err)
	}
	if !res.OK() {
		t.Fatalf("propose %s: %s %s", cmd.Kind, res.Code, res.Message)
	}
	return res
}

func sealed(t testing.TB, room *state.Room, sender, typ string, stateKey *string, content any) *event.Event {
	t.Helper()
	raw, err := event.CanonicalValue(content)
	if err != nil {
		t.Fatal(err)
	}
	e := &event.Event{RoomID: room.RoomID, Sender: sender, Origin: "t.test", OriginTS: time.Now().UnixMilli(),
		Type: typ, StateKey: stateKey, Content: raw, PrevEvents: []string{}, Depth: room.Depth + 1}
	if room.LastEventID != "" {
		e.PrevEvents = []string{room.LastEventID}
	}
	if err := event.Seal(e); err != nil {
		t.Fatal(err)
	}
	room.LastEventID, room.Depth = e.EventID, e.Depth
	return e
}

// seedRoom registers alice and creates a room, returning its local mirror for sealing.
func seedRoom(t testing.TB, c *Cluster) *state.Room {
	propose(t, c, &state.Command{Kind: state.KindRegister, Register: &state.Register{
		UserID: "@alice:t.test", PasswordHash: []byte("x"), TokenHash: "tok-alice"}})
	room := &state.Room{RoomID: "!r1:t.test"}
	empty := ""
	alice := "@alice:t.test"
	events := []*event.Event{
		sealed(t, room, alice, "m.room.create", &empty, state.CreateContent{Creator: alice, Visibility: "public", Federate: true}),
		sealed(t, room, alice, "m.room.member", &alice, map[string]string{"membership": "join"}),
		sealed(t, room, alice, "m.room.power_levels", &empty, state.DefaultPowerLevels(alice)),
	}
	propose(t, c, &state.Command{Kind: state.KindCreateRoom, CreateRoom: &state.CreateRoom{RoomID: room.RoomID, Events: events}})
	return room
}

func message(t testing.TB, room *state.Room, i int) *state.Command {
	e := sealed(t, room, "@alice:t.test", "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": fmt.Sprint(i)})
	return &state.Command{Kind: state.KindEvent, Event: &state.EventCommand{Event: e, TxnID: fmt.Sprintf("txn%d", i)}}
}

func TestSnapshotTruncateRestartKeepsEverything(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	small := func(o *Options) { o.SnapshotThreshold = 50; o.TrailingLogs = 10 }
	c := openSingle(t, dir, addr, small)
	room := seedRoom(t, c)
	for i := 0; i < 200; i++ {
		propose(t, c, message(t, room, i))
	}
	if err := c.Snapshot(); err != nil {
		t.Fatal(err)
	}
	first, err := c.logDB.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	if first <= 1 {
		t.Fatalf("log was not truncated (first index %d)", first)
	}
	// More entries after the snapshot must be replayed, once, on restart.
	for i := 200; i < 210; i++ {
		propose(t, c, message(t, room, i))
	}
	want := c.Store().StreamPos()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c = openSingle(t, dir, addr, small)
	defer c.Close()
	if got := c.Store().StreamPos(); got != want {
		t.Fatalf("stream position after restart %d, want %d", got, want)
	}
	if _, ok := c.Store().Account("@alice:t.test"); !ok {
		t.Fatal("account lost")
	}
	if _, ok := c.Store().Room(room.RoomID); !ok {
		t.Fatal("room lost")
	}
	events, _, err := c.Store().History(room.RoomID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]bool{}
	before := int64(0)
	for {
		page, more, err := c.Store().History(room.RoomID, before, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			if all[e.EventID] {
				t.Fatalf("event %s twice", e.EventID)
			}
			all[e.EventID] = true
		}
		if !more {
			break
		}
		before = page[0].StreamPos
	}
	if len(all) != 213 {
		t.Fatalf("%d events after restart, want 213", len(all))
	}
	if len(events) == 0 || events[len(events)-1].StreamPos != want {
		t.Fatal("newest event missing")
	}
	// A resend of a committed txn answers with the original event.
	res := propose(t, c, message(t, room, 5))
	if id, _ := c.Store().TxnEvent("@alice:t.test", "txn5"); res.EventID != id {
		t.Fatalf("txn resend gave %s, want %s", res.EventID, id)
	}
}

// A restarted node says it is healthy only once it has applied the log it started with:
// hashicorp/raft applies the entries after the snapshot only once it learns the commit index,
// and until then reads would miss what was committed before the restart.
func TestARestartedNodeIsHealthyOnlyOnceCaughtUp(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	opts := func(o *Options) { o.SnapshotThreshold = 1 << 20 } // all of it replayed
	c := openSingle(t, dir, addr, opts)
	room := seedRoom(t, c)
	for b := 0; b < 40; b++ {
		cmds := make([]*state.Command, 100)
		for i := range cmds {
			cmds[i] = message(t, room, b*100+i)
		}
		if _, err := c.ProposeBatch(context.Background(), cmds); err != nil {
			t.Fatal(err)
		}
	}
	want, pos := c.AppliedIndex(), c.Store().StreamPos()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	o := Options{NodeID: "n1", DataDir: dir, RaftBind: addr, Bootstrap: true,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, Logger: quietLogger()}
	opts(&o)
	c, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sawCatchingUp := false
	deadline := time.Now().Add(10 * time.Second)
	for !c.Healthy() {
		if time.Now().After(deadline) {
			t.Fatal("not healthy 10 s after the restart")
		}
		sawCatchingUp = sawCatchingUp || c.CatchingUp()
		time.Sleep(100 * time.Microsecond)
	}
	if got := c.AppliedIndex(); got < want {
		t.Fatalf("healthy at applied index %d, before the %d it had applied when it stopped", got, want)
	}
	if got := c.Store().StreamPos(); got != pos {
		t.Fatalf("healthy at stream position %d, want %d", got, pos)
	}
	if c.CatchingUp() {
		t.Fatal("healthy and still catching up")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := c.WaitStartedUp(ctx); err != nil {
		t.Fatalf("WaitStartedUp once healthy: %v", err)
	}
	t.Logf("catching up seen before healthy: %v", sawCatchingUp)
}

func TestProposalsShareEntries(t *testing.T) {
	c := openSingle(t, t.TempDir(), freeAddr(t), nil)
	defer c.Close()
	room := seedRoom(t, c)
	before := c.AppliedIndex()
	const n = 400
	cmds := make([]*state.Command, n)
	for i := range cmds {
		cmds[i] = message(t, room, i)
	}
	errs := make(chan error, n)
	for _, cmd := range cmds {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := c.Propose(ctx, cmd)
			if err == nil && !res.OK() {
				err = fmt.Errorf("%s", res.Code)
			}
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	entries := c.AppliedIndex() - before
	if entries >= n {
		t.Fatalf("%d commands used %d log entries: no batching", n, entries)
	}
	t.Logf("%d concurrent commands in %d entries", n, entries)
}

func TestDecodeBatchRejectsGarbage(t *testing.T) {
	if _, err := state.DecodeBatch([]byte("{not json")); err == nil {
		t.Fatal("garbage decoded")
	}
	b, _ := json.Marshal(state.Batch{})
	if _, err := state.DecodeBatch(b); err != nil {
		t.Fatal(err)
	}
}

// Groups proposed at once each get their own results, in their own order, and their events
// land in the stream contiguously and in group order.
func TestProposeGroupKeepsEachGroupTogetherAndInOrder(t *testing.T) {
	c := openSingle(t, t.TempDir(), freeAddr(t), nil)
	defer c.Close()
	room := seedRoom(t, c)
	const groups, size = 20, 8
	cmds := make([][]*state.Command, groups)
	for g := range cmds {
		for i := range size {
			cmds[g] = append(cmds[g], message(t, room, g*size+i))
		}
	}
	results := make([][]state.Result, groups)
	errs := make(chan error, groups)
	for g := range cmds {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := c.ProposeGroup(ctx, cmds[g])
			results[g] = res
			errs <- err
		}()
	}
	for range groups {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for g := range cmds {
		if len(results[g]) != size {
			t.Fatalf("group %d: %d results for %d commands", g, len(results[g]), size)
		}
		for i, r := range results[g] {
			if !r.OK() || r.EventID != cmds[g][i].Event.Event.EventID {
				t.Fatalf("group %d result %d is %+v, want event %s", g, i, r, cmds[g][i].Event.Event.EventID)
			}
			if i > 0 && r.StreamPos != results[g][i-1].StreamPos+1 {
				t.Fatalf("group %d: positions %d then %d: not contiguous and in order", g, results[g][i-1].StreamPos, r.StreamPos)
			}
		}
	}
}

// TestBatchLingerOnlyWhileBusy: a batch that starts while another is in flight waits for more
// proposals (here all three that come within its linger share one entry); on an idle node a
// proposal never waits.
func TestBatchLingerOnlyWhileBusy(t *testing.T) {
	const linger = 400 * time.Millisecond
	release := make(chan struct{})
	var holdNext atomic.Bool
	batches := make(chan int, 16)
	c := openSingle(t, t.TempDir(), freeAddr(t), func(o *Options) {
		o.BatchLinger = linger
		o.OnCommit = func(_, _ float64, commands int) {
			batches <- commands
			if holdNext.CompareAndSwap(true, false) { // this batch keeps its slot until released
				<-release
			}
		}
	})
	defer c.Close()
	var releaseOnce sync.Once
	releaseHeld := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseHeld() // before Close, even when the test fails early
	room := seedRoom(t, c)
	for len(batches) > 0 {
		<-batches
	}
	holdNext.Store(true)
	proposeAsync := func(i int) chan error {
		cmd := message(t, room, i) // built here: sealing moves the room's head
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := c.Propose(ctx, cmd)
			done <- err
		}()
		return done
	}
	held := proposeAsync(0)
	if n := <-batches; n != 1 {
		t.Fatalf("first batch: %d commands", n)
	}
	// Another batch is in flight now: the next one lingers and gathers what comes meanwhile.
	var later []chan error
	for i := 1; i <= 3; i++ {
		later = append(later, proposeAsync(i))
		time.Sleep(30 * time.Millisecond)
	}
	select {
	case n := <-batches:
		if n != 3 {
			t.Fatalf("a batch started while another was in flight holds %d commands, want all 3", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the lingering batch never committed")
	}
	releaseHeld()
	for _, done := range append(later, held) {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// Idle again: a proposal is committed at once, without waiting out the linger. A batch's
	// proposers hear of its commit just before it gives back its slot, so wait for the slots.
	for deadline := time.Now().Add(5 * time.Second); len(c.inflight) > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d batches still hold their slots", len(c.inflight))
		}
	}
	start := time.Now()
	propose(t, c, message(t, room, 4))
	if waited := time.Since(start); waited >= linger {
		t.Fatalf("an idle node's proposal took %v: it lingered", waited)
	}
	if n := <-batches; n != 1 {
		t.Fatalf("idle batch: %d commands", n)
	}
}
