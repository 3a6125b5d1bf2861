package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/client"
	"github.com/parley-chat/parley/cmd/parley-bench/internal/stats"
)

// roomSpec describes a room benchmark: publishers send numbered,
// timestamped messages into one public room, subscribers record every
// push. fanout, latency, cluster and federation are all such benchmarks
// with different shapes.
type roomSpec struct {
	label        string
	rooms        int             // publishers spread over this many rooms (>= 1); subscribers join all
	pubTargets   []client.Target // publisher i connects to pubTargets[i % len]
	subTargets   []client.Target // subscriber j connects to subTargets[j % len]
	pubs, subs   int
	connsPerUser int    // subscriber connections per subscriber user
	pubRole      string // user name tags
	subRole      string
	pubNoun      string // how the report names them (default pubs, subs)
	subNoun      string

	openLoop    bool    // true: fixed rate; false: each publisher keeps window sends in flight
	rate        float64 // messages per second, all publishers together (open loop)
	window      int     // sends in flight per publisher (closed loop)
	maxBacklog  int     // closed loop: acknowledged messages the slowest subscriber may lack (0: unbounded)
	maxMsgs     int
	maxInflight int // open loop: sends awaiting ok at once

	duration, grace, warmup, joinTimeout time.Duration
	bodySize                             int

	trackIDs    bool      // subscribers count event ids (cluster's exactly-once check)
	okToPush    bool      // also measure from the ok of a send to each push of it (federation's relay lag)
	cpu         *cpuCount // read around the send phase when set
	alias       string    // create the room with this alias
	joinByAlias bool      // subscribers join "#alias:<org of publisher 0>"
}

type publisher struct {
	idx, target int
	conn        *client.Conn
}

// subscriber is one subscribing connection and what it saw.
type subscriber struct {
	idx, target int
	roomIDs     map[string]bool
	conn        *client.Conn
	capacity    int64
	seen        []atomic.Uint64 // bit per seq
	lat         *stats.Histogram

	// okToPush only: when the tool read each message's ok (by seq; 0 until then), the ok→push
	// distribution, and when each push handled before its message's ok was stored (by seq),
	// settled in okPushResult.
	okAt      []atomic.Int64
	okPush    *stats.Histogram
	earlyMu   sync.Mutex
	earlyPush map[int64]int64

	unique, dups, outOfRange, reordered atomic.Int64
	lastPos, lastAt                     atomic.Int64
	ready                               atomic.Bool

	// trackIDs only: the event id first pushed for each message (by its seq), and every other
	// push of a message (a repeat, or a second event for one send) by event id. A slice indexed
	// by seq, not a map of every id: the map's inserts were a tenth of the tool's CPU in the
	// cluster row, taken from the nodes beside it (docs/performance.md).
	idsMu   sync.Mutex
	firstID []string
	moreIDs map[string]int32 // pushes other than a message's first, by event id
}

func (s *subscriber) onEvent(ev *client.Event, at time.Time) {
	if !s.roomIDs[ev.RoomID] || ev.Type != "m.room.message" {
		return
	}
	body := ev.Content.Body
	if isWarmup(body) {
		s.ready.Store(true)
		return
	}
	seq, sent, ok := parseBody(body)
	if !ok {
		return
	}
	if seq >= s.capacity {
		s.outOfRange.Add(1)
		s.recordID(-1, ev.EventID)
		return
	}
	bit := uint64(1) << uint(seq&63)
	if s.seen[seq>>6].Or(bit)&bit != 0 {
		s.dups.Add(1)
		s.recordID(-1, ev.EventID)
		return
	}
	s.recordID(seq, ev.EventID)
	s.unique.Add(1)
	if ev.StreamPos > 0 {
		if ev.StreamPos <= s.lastPos.Load() {
			s.reordered.Add(1)
		} else {
			s.lastPos.Store(ev.StreamPos) // only this reader goroutine writes
		}
	}
	s.lastAt.Store(at.UnixNano())
	s.lat.Record(at.UnixNano() - sent)
	if s.okAt != nil {
		if okAt := s.okAt[seq].Load(); okAt > 0 && at.UnixNano() >= okAt {
			s.okPush.Record(at.UnixNano() - okAt)
		} else { // the push overtook the ok; whether the send was acked is known after the run
			s.earlyMu.Lock()
			s.earlyPush[seq] = at.UnixNano()
			s.earlyMu.Unlock()
		}
	}
}

// recordID notes a pushed event id: as the first push of message seq, or (seq < 0) as
// another push. id may be a view of the frame (client.DialOptions.EventViews): what is
// kept is a copy.
func (s *subscriber) recordID(seq int64, id string) {
	if s.firstID == nil {
		return
	}
	id = strings.Clone(id)
	s.idsMu.Lock()
	if seq >= 0 {
		s.firstID[seq] = id
	} else {
		s.moreIDs[id]++
	}
	s.idsMu.Unlock()
}

// roomBench runs one roomSpec.
type roomBench struct {
	e       *env
	spec    roomSpec
	machine machineCount // this machine's CPU over the send phase

	roomID    string   // the first room (warm-up, reports)
	roomIDs   []string // every room; publisher i sends to roomIDs[i % len]
	joinRef   string
	pubOrg    string
	subOrg    string
	pubs      []*publisher
	subs      []*subscriber
	connected int

	capacity   int64
	acked      []atomic.Uint64
	ackedIDs   []string
	okAt       []atomic.Int64 // okToPush only: when each message's ok was read, by seq
	okPush     *stats.Histogram
	okHist     *stats.Histogram
	okByTarget []*stats.Histogram
	okCount    []atomic.Int64 // by publisher target
	lat        *stats.Histogram
	errs       *errCounter

	attempted, ok, limited, failed, skipped, inflight atomic.Int64
	skippedClosed                                     atomic.Int64 // of skipped: the publisher's connection was closed
	issued                                            atomic.Int64 // highest seq sent + 1

	started, t0, sendEnd, drainEnd time.Time
	warmupReady                    int
	warmupDur                      time.Duration
}

// unavailableError marks a join that the node answered with M_UNAVAILABLE
// (no federation, or the remote org cannot be reached).
type unavailableError struct{ err error }

func (u *unavailableError) Error() string { return u.err.Error() }
func (u *unavailableError) Unwrap() error { return u.err }

func newRoomBench(e *env, spec roomSpec) *roomBench {
	capacity := int64(spec.maxMsgs)
	if spec.openLoop {
		if c := int64(math.Ceil(spec.rate*spec.duration.Seconds())) + 1; c < capacity {
			capacity = c
		}
	}
	rb := &roomBench{
		e:          e,
		spec:       spec,
		capacity:   capacity,
		acked:      make([]atomic.Uint64, (capacity+63)/64),
		okHist:     stats.New(),
		okByTarget: make([]*stats.Histogram, len(spec.pubTargets)),
		okCount:    make([]atomic.Int64, len(spec.pubTargets)),
		lat:        stats.New(),
		errs:       newErrCounter(),
		started:    time.Now(),
	}
	for i := range rb.okByTarget {
		rb.okByTarget[i] = stats.New()
	}
	if spec.trackIDs {
		rb.ackedIDs = make([]string, capacity)
	}
	if spec.okToPush {
		rb.okAt = make([]atomic.Int64, capacity)
		rb.okPush = stats.New()
	}
	return rb
}

// close closes every connection; safe after a partial setup.
func (rb *roomBench) close() {
	var conns []*client.Conn
	for _, p := range rb.pubs {
		if p != nil {
			conns = append(conns, p.conn)
		}
	}
	for _, s := range rb.subs {
		if s != nil {
			conns = append(conns, s.conn)
		}
	}
	var closed atomic.Int64
	rb.e.prog.Phase(rb.spec.label+" close", func() progressState {
		return progressState{Done: closed.Load(), Total: int64(len(conns))}
	})
	closeAll(conns, &closed)
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// setup registers users, connects publishers, creates and joins the room,
// connects and joins subscribers.
func (rb *roomBench) setup(ctx context.Context) error {
	e, spec := rb.e, rb.spec
	ctx, cancel := context.WithTimeout(ctx, e.opt.setupTimeout)
	defer cancel()

	nSubUsers := ceilDiv(spec.subs, spec.connsPerUser)
	users := make([]userSpec, 0, spec.pubs+nSubUsers)
	for i := 0; i < spec.pubs; i++ {
		users = append(users, userSpec{e.userName(spec.pubRole, i), spec.pubTargets[i%len(spec.pubTargets)]})
	}
	for u := 0; u < nSubUsers; u++ {
		users = append(users, userSpec{e.userName(spec.subRole, u), spec.subTargets[u%len(spec.subTargets)]})
	}
	sessions, err := e.provisionUsers(ctx, spec.label+" users", users)
	if err != nil {
		return err
	}
	pubSessions, subSessions := sessions[:spec.pubs], sessions[spec.pubs:]
	rb.pubOrg = pubSessions[0].Org()
	if len(subSessions) > 0 {
		rb.subOrg = subSessions[0].Org()
	}
	if spec.joinByAlias && rb.pubOrg == rb.subOrg {
		return fmt.Errorf("publishers and subscribers are both users of org %q: federation needs two orgs", rb.pubOrg)
	}

	// Publishers.
	rb.pubs = make([]*publisher, spec.pubs)
	var pubDone atomic.Int64
	e.prog.Phase(spec.label+" publishers", func() progressState {
		return progressState{Done: pubDone.Load(), Total: int64(spec.pubs)}
	})
	var pubErr atomic.Pointer[error]
	forEach(ctx, spec.pubs, e.opt.setupConc, func(i int) {
		t := i % len(spec.pubTargets)
		c, err := e.dial(ctx, spec.pubTargets[t], pubSessions[i].AccessToken, nil)
		if err != nil {
			err = fmt.Errorf("publisher %d on %s: %w", i, spec.pubTargets[t].Addr, err)
			pubErr.CompareAndSwap(nil, &err)
			return
		}
		rb.pubs[i] = &publisher{idx: i, target: t, conn: c}
		pubDone.Add(1)
	})
	if p := pubErr.Load(); p != nil {
		return *p
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("connecting publishers: %w", err)
	}

	// The rooms. Room r is created by publisher r % pubs, which sends to it when r < pubs, and
	// the other publishers of a room join it: so a publisher is a member only of the rooms it
	// sends to (and, with more rooms than publishers, of the unused ones it created), as a real
	// sender would be. (Until 2026-12-06 publisher 0 created every room and stayed in all of
	// them, which made it a fourth watcher of the cluster rows: docs/performance.md.)
	nRooms := max(spec.rooms, 1)
	creator := func(room int) int { return room % spec.pubs }
	rb.roomIDs = make([]string, nRooms)
	var roomErr atomic.Pointer[error]
	forEach(ctx, nRooms, e.opt.setupConc, func(r int) {
		name, alias := fmt.Sprintf("parley-bench %s %s #%d", spec.label, e.runID, r), ""
		if r == 0 {
			name, alias = "parley-bench "+spec.label+" "+e.runID, spec.alias
		}
		rctx, rcancel := context.WithTimeout(ctx, e.opt.timeout)
		defer rcancel()
		id, err := rb.pubs[creator(r)].conn.CreateRoom(rctx, name, "public", alias)
		if err != nil {
			err = fmt.Errorf("create_room %d: %w", r, err)
			roomErr.CompareAndSwap(nil, &err)
			return
		}
		rb.roomIDs[r] = id
	})
	if p := roomErr.Load(); p != nil {
		return *p
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("creating rooms: %w", err)
	}
	rb.roomID = rb.roomIDs[0]
	forEach(ctx, spec.pubs, e.opt.setupConc, func(i int) {
		p := rb.pubs[i]
		r := p.idx % nRooms
		if creator(r) == p.idx {
			return // it created the room
		}
		jctx, cancel := context.WithTimeout(ctx, spec.joinTimeout)
		defer cancel()
		if _, err := p.conn.Join(jctx, rb.roomIDs[r]); err != nil {
			err = fmt.Errorf("publisher %d: join %s: %w", p.idx, rb.roomIDs[r], err)
			pubErr.CompareAndSwap(nil, &err)
		}
	})
	if p := pubErr.Load(); p != nil {
		return *p
	}

	// Subscribers: each user's first connection joins, then the others
	// connect (so that every connection opens on an already joined user).
	rb.joinRef = rb.roomID
	if spec.joinByAlias {
		rb.joinRef = "#" + spec.alias + ":" + rb.pubOrg
	}
	rb.subs = make([]*subscriber, spec.subs)
	words := (rb.capacity + 63) / 64
	for j := range rb.subs {
		ids := make(map[string]bool, len(rb.roomIDs))
		for _, id := range rb.roomIDs {
			ids[id] = true
		}
		s := &subscriber{idx: j, target: j % len(spec.subTargets), roomIDs: ids, capacity: rb.capacity,
			seen: make([]atomic.Uint64, words), lat: rb.lat}
		if spec.trackIDs {
			s.firstID = make([]string, rb.capacity)
			s.moreIDs = map[string]int32{}
		}
		if spec.okToPush {
			s.okAt, s.okPush, s.earlyPush = rb.okAt, rb.okPush, map[int64]int64{}
		}
		rb.subs[j] = s
	}
	var subDone, subFail atomic.Int64
	e.prog.Phase(spec.label+" subscribers", func() progressState {
		return progressState{Done: subDone.Load(), Total: int64(spec.subs), Detail: fmt.Sprintf("failed %d", subFail.Load())}
	})
	var joinErr atomic.Pointer[error]
	dialSub := func(j int) error {
		s := rb.subs[j]
		c, err := e.dial(ctx, spec.subTargets[s.target], subSessions[j/spec.connsPerUser].AccessToken, s.onEvent)
		if err != nil {
			return err
		}
		s.conn = c
		return nil
	}
	forEach(ctx, nSubUsers, e.opt.setupConc, func(u int) {
		j := u * spec.connsPerUser
		if err := dialSub(j); err != nil {
			err = fmt.Errorf("subscriber %d on %s: %w", j, spec.subTargets[rb.subs[j].target].Addr, err)
			joinErr.CompareAndSwap(nil, &err)
			subFail.Add(1)
			return
		}
		jctx, cancel := context.WithTimeout(ctx, spec.joinTimeout)
		defer cancel()
		got, err := rb.subs[j].conn.Join(jctx, rb.joinRef)
		switch {
		case client.Code(err) == "M_UNAVAILABLE":
			err = fmt.Errorf("subscriber on %s: join %s: %w", spec.subTargets[rb.subs[j].target].Addr, rb.joinRef, &unavailableError{err})
		case err != nil:
			err = fmt.Errorf("subscriber on %s: join %s: %w", spec.subTargets[rb.subs[j].target].Addr, rb.joinRef, err)
		case got != rb.roomID:
			err = fmt.Errorf("join %s answered room %s, want %s", rb.joinRef, got, rb.roomID)
		}
		for _, other := range rb.roomIDs[1:] {
			if err != nil {
				break
			}
			_, err = rb.subs[j].conn.Join(jctx, other)
		}
		if err != nil {
			joinErr.CompareAndSwap(nil, &err)
			subFail.Add(1)
			return
		}
		subDone.Add(1)
	})
	if p := joinErr.Load(); p != nil {
		return *p
	}
	forEach(ctx, spec.subs, e.opt.setupConc, func(j int) {
		if j%spec.connsPerUser == 0 {
			return // already connected and joined
		}
		if err := dialSub(j); err != nil {
			rb.errs.add("subscriber dial", err)
			subFail.Add(1)
			return
		}
		subDone.Add(1)
	})
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("connecting subscribers: %w", err)
	}
	for _, s := range rb.subs {
		if s.conn != nil {
			rb.connected++
		}
	}
	if rb.connected == 0 {
		return errors.New("no subscriber could connect")
	}
	return nil
}

// liveSubs are subscribers whose connection is (still) open.
func (rb *roomBench) liveSubs() []*subscriber {
	var out []*subscriber
	for _, s := range rb.subs {
		if s.conn != nil && s.conn.Err() == nil {
			out = append(out, s)
		}
	}
	return out
}

// warmUp sends warm-up messages until every connected subscriber has seen
// one (or the warm-up bound passes), so that measuring starts with every
// subscription in place.
func (rb *roomBench) warmUp(ctx context.Context) {
	start := time.Now()
	deadline := start.Add(rb.spec.warmup)
	allReady := func() (int, bool) {
		n := 0
		for _, s := range rb.subs {
			if s.ready.Load() {
				n++
			}
		}
		return n, n >= len(rb.liveSubs())
	}
	rb.e.prog.Phase(rb.spec.label+" warm-up", func() progressState {
		n, _ := allReady()
		return progressState{Done: int64(n), Total: int64(rb.connected)}
	})
	p := rb.pubs[0]
	for n := 0; ctx.Err() == nil && time.Now().Before(deadline); n++ {
		sctx, cancel := context.WithTimeout(ctx, rb.e.opt.timeout)
		_, err := p.conn.Send(sctx, rb.roomID, rb.e.runID+"-w"+strconv.Itoa(n), warmupBody(n))
		cancel()
		wait := 500 * time.Millisecond
		var pe *client.Error
		if errors.As(err, &pe) && pe.RetryAfter > wait {
			wait = pe.RetryAfter
		}
		if err != nil {
			rb.errs.add("warm-up send", err)
		}
		if p.conn.Err() != nil {
			break
		}
		until := time.Now().Add(wait)
		for time.Now().Before(until) && time.Now().Before(deadline) {
			if _, ok := allReady(); ok {
				rb.warmupReady, _ = allReady()
				rb.warmupDur = time.Since(start)
				return
			}
			if !sleepCtx(ctx, 20*time.Millisecond) {
				break
			}
		}
	}
	rb.warmupReady, _ = allReady()
	rb.warmupDur = time.Since(start)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// sendOne sends message seq from p. It returns how long to back off (a
// rate limit's retry_after, or a short pause after an error) and whether
// the publisher's connection is gone.
func (rb *roomBench) sendOne(ctx context.Context, p *publisher, seq int64) (backoff time.Duration, gone bool) {
	start := time.Now()
	body := encodeBody(seq, start.UnixNano(), rb.spec.bodySize)
	rb.attempted.Add(1)
	for {
		cur := rb.issued.Load()
		if seq < cur || rb.issued.CompareAndSwap(cur, seq+1) {
			break
		}
	}
	sctx, cancel := context.WithTimeout(ctx, rb.e.opt.timeout)
	r, err := p.conn.Send(sctx, rb.roomIDs[p.idx%len(rb.roomIDs)], rb.e.runID+"-"+strconv.FormatInt(seq, 10), body)
	cancel()
	if err == nil {
		d := r.At.Sub(start)
		rb.okHist.Record(int64(d))
		rb.okByTarget[p.target].Record(int64(d))
		rb.okCount[p.target].Add(1)
		bit := uint64(1) << uint(seq&63)
		rb.acked[seq>>6].Or(bit)
		if rb.ackedIDs != nil {
			rb.ackedIDs[seq] = r.EventID // distinct index per goroutine
		}
		if rb.okAt != nil {
			rb.okAt[seq].Store(r.At.UnixNano())
		}
		rb.ok.Add(1)
		return 0, false
	}
	var pe *client.Error
	if errors.As(err, &pe) && pe.Code == "M_LIMIT_EXCEEDED" {
		rb.limited.Add(1)
		if pe.RetryAfter <= 0 {
			return 100 * time.Millisecond, false
		}
		return pe.RetryAfter, false
	}
	rb.failed.Add(1)
	rb.errs.add("send", err)
	var ce *client.ClosedError
	if errors.As(err, &ce) {
		return 0, true
	}
	return 50 * time.Millisecond, false
}

// run sends for spec.duration (or until max-msgs), then waits for the
// outstanding oks and, up to spec.grace, for the pushes.
func (rb *roomBench) run(ctx context.Context) {
	spec := rb.spec
	if spec.cpu != nil {
		spec.cpu.start(ctx, rb.e)
	}
	rb.machine.start()
	rb.t0 = time.Now()
	runCtx, cancel := context.WithDeadline(ctx, rb.t0.Add(spec.duration))
	defer cancel()
	rb.e.prog.Phase(spec.label+" run", func() progressState {
		frac := float64(time.Since(rb.t0)) / float64(spec.duration)
		if f := float64(rb.attempted.Load()) / float64(rb.capacity); f > frac {
			frac = f
		}
		var deliveries int64
		for _, s := range rb.subs {
			deliveries += s.unique.Load()
		}
		return progressState{Done: int64(math.Min(frac, 1) * 1000), Total: 1000, HideCount: true,
			Detail: fmt.Sprintf("sent %d ok %d limited %d err %d deliveries %d", rb.attempted.Load(), rb.ok.Load(), rb.limited.Load(), rb.failed.Load(), deliveries)}
	})

	var wg sync.WaitGroup
	if spec.openLoop {
		rb.openLoop(runCtx, ctx, &wg)
	} else {
		var next atomic.Int64
		bl := startBacklog(spec.maxBacklog, rb.slowestDelivered)
		defer bl.close()
		for _, p := range rb.pubs {
			for w := 0; w < spec.window; w++ {
				wg.Add(1)
				go func(p *publisher) {
					defer wg.Done()
					for bl.acquire(runCtx) {
						seq := next.Add(1) - 1
						if seq >= rb.capacity {
							return
						}
						backoff, gone := rb.sendOne(ctx, p, seq)
						if gone || backoff > 0 {
							bl.release() // not delivered: it holds no place in the backlog
						}
						if gone {
							return
						}
						if backoff > 0 {
							sleepCtx(runCtx, min(backoff, 2*time.Second))
						}
					}
				}(p)
			}
		}
	}
	wg.Wait()
	rb.sendEnd = time.Now()
	rb.machine.stop()
	if spec.cpu != nil {
		spec.cpu.stop(ctx, rb.e)
	}
	rb.drain(ctx)
	rb.drainEnd = time.Now()
}

// openLoop schedules sends at a fixed rate regardless of how fast oks come
// back (no coordinated omission); a send that would exceed maxInflight is
// skipped and counted.
func (rb *roomBench) openLoop(runCtx, ctx context.Context, wg *sync.WaitGroup) {
	spec := rb.spec
	interval := float64(time.Second) / spec.rate
	for seq := int64(0); seq < rb.capacity; seq++ {
		due := rb.t0.Add(time.Duration(float64(seq) * interval))
		if d := time.Until(due); d > 0 {
			if !sleepCtx(runCtx, d) {
				return
			}
		} else if runCtx.Err() != nil {
			return
		}
		p := rb.pubs[seq%int64(len(rb.pubs))]
		if p.conn.Err() != nil {
			rb.skipped.Add(1)
			rb.skippedClosed.Add(1)
			rb.errs.addKey("send skipped: publisher connection closed", 1)
			continue
		}
		if rb.inflight.Load() >= int64(spec.maxInflight) {
			rb.skipped.Add(1)
			rb.errs.addKey("send skipped: max-inflight reached", 1)
			continue
		}
		rb.inflight.Add(1)
		wg.Add(1)
		go func(p *publisher, seq int64) {
			defer wg.Done()
			defer rb.inflight.Add(-1)
			rb.sendOne(ctx, p, seq)
		}(p, seq)
	}
}

// ackedSeen counts the acked messages a subscriber has seen.
func (rb *roomBench) ackedSeen(s *subscriber) int64 {
	var n int
	words := (rb.issued.Load() + 63) / 64
	if words > int64(len(rb.acked)) {
		words = int64(len(rb.acked))
	}
	for i := int64(0); i < words; i++ {
		n += bits.OnesCount64(s.seen[i].Load() & rb.acked[i].Load())
	}
	return int64(n)
}

// drain waits up to spec.grace for every live subscriber to have seen
// every acked message.
func (rb *roomBench) drain(ctx context.Context) {
	deadline := time.Now().Add(rb.spec.grace)
	ok := rb.ok.Load()
	pending := func() int64 {
		var missing int64
		for _, s := range rb.liveSubs() {
			missing += ok - rb.ackedSeen(s)
		}
		return missing
	}
	want := ok * int64(len(rb.liveSubs()))
	rb.e.prog.Phase(rb.spec.label+" drain", func() progressState {
		return progressState{Done: want - pending(), Total: want}
	})
	for time.Now().Before(deadline) && pending() > 0 {
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return
		}
	}
}

// okPushResult completes the ok→push distribution once the sends are settled, with the
// pushes handled before the ok of their (acked) send; one read before that ok counts as 0.
// It returns the distribution and how many pushes were read before their ok.
func (rb *roomBench) okPushResult() (*stats.Histogram, int64) {
	var early int64
	for _, s := range rb.subs {
		if s.conn == nil || s.earlyPush == nil {
			continue
		}
		s.earlyMu.Lock()
		for seq, at := range s.earlyPush {
			okAt := rb.okAt[seq].Load()
			if okAt == 0 {
				continue // never acked: counted as delivered but not acked
			}
			if at < okAt {
				early++
			}
			rb.okPush.Record(at - okAt)
		}
		s.earlyPush = map[int64]int64{} // settled once
		s.earlyMu.Unlock()
	}
	return rb.okPush, early
}

// roomResult is what a room benchmark measured.
type roomResult struct {
	attempted, ok, limited, failed, skipped int64
	skippedClosed                           int64
	sendSeconds                             float64
	okPerSecond                             float64

	subsConnected, subsReady, subsDropped, slowConsumers int
	expected, delivered, lost, dups, unexpected          int64
	reordered, outOfRange, deliveries                    int64
	deliverySeconds, deliveriesPerSecond                 float64
}

func (rb *roomBench) result() roomResult {
	r := roomResult{
		attempted:     rb.attempted.Load(),
		ok:            rb.ok.Load(),
		limited:       rb.limited.Load(),
		failed:        rb.failed.Load(),
		skipped:       rb.skipped.Load(),
		skippedClosed: rb.skippedClosed.Load(),
		sendSeconds:   rb.sendEnd.Sub(rb.t0).Seconds(),
		subsConnected: rb.connected,
		subsReady:     rb.warmupReady,
	}
	if r.sendSeconds > 0 {
		r.okPerSecond = float64(r.ok) / r.sendSeconds
	}
	var last int64
	for _, s := range rb.subs {
		if s.conn == nil {
			continue
		}
		if ce := s.conn.Err(); ce != nil {
			r.subsDropped++
			if ce.Code == client.ClosePolicyViolation {
				r.slowConsumers++
			}
		}
		seen := rb.ackedSeen(s)
		u := s.unique.Load()
		r.delivered += seen
		r.unexpected += u - seen
		r.deliveries += u
		r.dups += s.dups.Load()
		r.reordered += s.reordered.Load()
		r.outOfRange += s.outOfRange.Load()
		if at := s.lastAt.Load(); at > last {
			last = at
		}
	}
	r.expected = r.ok * int64(r.subsConnected)
	r.lost = r.expected - r.delivered
	if last > 0 {
		r.deliverySeconds = time.Unix(0, last).Sub(rb.t0).Seconds()
		if r.deliverySeconds > 0 {
			r.deliveriesPerSecond = float64(r.deliveries) / r.deliverySeconds
		}
	}
	return r
}

// addCommon puts the measurements every room scenario shares into rep.
func (rb *roomBench) addCommon(rep *Report, r roomResult) {
	rep.metric("send_attempted", "sends attempted", float64(r.attempted), "")
	rep.metric("send_ok", "sends ok (committed)", float64(r.ok), "")
	rep.metric("send_ok_per_s", "send ok rate", r.okPerSecond, "/s")
	rep.metric("send_limited", "sends refused M_LIMIT_EXCEEDED", float64(r.limited), "")
	rep.metric("send_failed", "sends failed (other errors)", float64(r.failed), "")
	if rb.spec.openLoop {
		rep.metric("send_skipped", "sends skipped (backlog or closed)", float64(r.skipped), "")
	}
	rep.metric("send_phase_s", "send phase", r.sendSeconds, "s")
	rep.metric("subs_connected", "subscribers connected", float64(r.subsConnected), "")
	rep.metric("subs_ready", "subscribers that saw the warm-up", float64(r.subsReady), "")
	rep.metric("subs_dropped", "subscribers disconnected by the node", float64(r.subsDropped), "")
	rep.metric("subs_slow_consumer", "  of which 1008 slow consumer", float64(r.slowConsumers), "")
	rep.metric("deliveries", "deliveries (unique pushes to subscribers)", float64(r.deliveries), "")
	rep.metric("deliveries_per_s", "deliveries/s", r.deliveriesPerSecond, "/s")
	rep.metric("expected", "expected deliveries (ok × subscribers)", float64(r.expected), "")
	rep.metric("lost", "lost (expected, not seen after grace)", float64(r.lost), "")
	rep.metric("duplicates", "duplicates", float64(r.dups), "")
	rep.metric("delivered_not_acked", "delivered but not acked", float64(r.unexpected), "")
	rep.metric("reordered", "pushes with a lower stream_pos than the previous", float64(r.reordered), "")
	// The overall distributions come first, before any the scenario added.
	own := rep.Latencies
	rep.Latencies = nil
	rep.latency("send_ok", "send→ok", rb.okHist)
	rep.latency("send_push", "send→push", rb.lat)
	rep.Latencies = append(rep.Latencies, own...)
	rep.Errors = rb.errs.snapshot()
	if r.dups > 0 {
		rep.fail("%d duplicate deliveries", r.dups)
	}
	// A send that failed has no ok and no push: the rates and percentiles above leave it
	// out, so they would look better than what the node did. (Refusals of the rate limit are
	// reported below; sends skipped at --max-inflight are counted above.)
	if r.failed > 0 {
		rep.fail("%d of %d sends failed (see ERROR): the rates and latencies above leave them out", r.failed, r.attempted)
	}
	if r.skippedClosed > 0 {
		rep.fail("%d scheduled sends were not made: their publisher's connection had been closed", r.skippedClosed)
	}
	if r.lost > 0 {
		rep.fail("%d of %d expected deliveries were not seen within the %s grace period (%d subscribers were disconnected by the node)", r.lost, r.expected, rb.spec.grace, r.subsDropped)
	}
	if r.subsReady < r.subsConnected {
		rep.addNote("%d of %d subscribers never saw a warm-up message within %s", r.subsConnected-r.subsReady, r.subsConnected, rb.spec.warmup)
	}
	addLimitsNote(rep, rb.e.opt.nodeLimits)
	if r.limited > 0 {
		rep.addNote("%d sends were refused with M_LIMIT_EXCEEDED: the rates above measure the node's per-user send limit, not its capacity. Raise the limits and run again.", r.limited)
	}
	rep.addNote("latencies are measured on this machine's clock: the send time travels in the message body, the push time is when the frame was read; with the tool and the node on one host, the tool's own CPU use adds to them")
}

// addLimitsNote states how the nodes' per-user send limit was raised for the run (--node-limits),
// or, when the operator did not say, what a run needs.
func addLimitsNote(rep *Report, nodeLimits string) {
	if nodeLimits == "" {
		rep.addNote(limitsAdvice)
		return
	}
	rep.param("node limits", nodeLimits)
	rep.addNote("the nodes' per-user send limit was raised through configuration for this run (%s), as load needs: with the defaults (10/s, burst 50) every publisher is throttled", nodeLimits)
}

// limitsAdvice is printed by every sending scenario whose run did not say how the limits were raised.
const limitsAdvice = "parley-bench expects the operator to raise the node's per-user send limits for benchmark runs: " +
	"set limits.send_per_second and limits.send_burst on every node (env PARLEY_LIMITS_SEND_PER_SECOND=100000 PARLEY_LIMITS_SEND_BURST=100000); " +
	"with the defaults (10/s, burst 50) every publisher is throttled"

func (rb *roomBench) addParams(rep *Report) {
	spec := rb.spec
	pubNoun, subNoun := spec.pubNoun, spec.subNoun
	if pubNoun == "" {
		pubNoun = "pubs"
	}
	if subNoun == "" {
		subNoun = "subs"
	}
	rep.param(pubNoun, spec.pubs)
	rep.param(subNoun, spec.subs)
	rep.param("conns-per-user", spec.connsPerUser)
	if spec.openLoop {
		rep.param("rate", fmt.Sprintf("%g/s", spec.rate))
		rep.param("max-inflight", spec.maxInflight)
	} else {
		rep.param("window", spec.window)
		if spec.maxBacklog > 0 {
			rep.param("max-backlog", spec.maxBacklog)
		}
	}
	rep.param("max-msgs", spec.maxMsgs)
	rep.param("duration", spec.duration)
	rep.param("grace", spec.grace)
	rep.param("body-size", spec.bodySize)
	rep.param("room", rb.roomID)
	if len(rb.roomIDs) > 1 {
		rep.param("rooms", len(rb.roomIDs))
	}
	rep.param("user-prefix", rb.e.opt.userPrefix)
}

func targets(ts ...client.Target) []client.Target { return ts }
