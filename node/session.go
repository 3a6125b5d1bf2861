package node

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parley-chat/parley/consensus/event"
)

const (
	authTimeout  = 10 * time.Second
	writeTimeout = 10 * time.Second
	// closeFrameTimeout is the close frame's own write deadline (see finish).
	closeFrameTimeout = 2 * time.Second

	closeAuth = 4001
	// closeResync (1012, service restart) ends every session when the node's state was
	// replaced by a snapshot: reconnect and sync (hub.resyncAll).
	closeResync  = websocket.CloseServiceRestart
	resyncReason = "state replaced by a snapshot: reconnect and sync"
)

// session is one WebSocket connection. Its reader runs on the HTTP handler's goroutine and
// handles requests in order. Queued frames are written by the server's write pool
// (writepool.go), or by a writer goroutine of the session's own that exists only while
// frames wait for something (the pacing slot, a full socket).
type session struct {
	srv       *Server
	conn      *websocket.Conn
	log       *slog.Logger
	user      string
	tokenHash string
	// addr is what the per-address limits count the client under (sourceKey).
	addr string
	// sweepsAtAuth are the hub's sweeps begun before the token was looked up.
	sweepsAtAuth sweepCounts

	raw    net.Conn        // the connection under gorilla: frames are written here directly
	rawSys syscall.RawConn // raw's socket when the write pool may write it (writepool.go), else nil
	wlock  chan struct{}   // a lock (capacity 1) serializing writes to raw; waitable with a timeout
	urgent chan struct{}   // capacity 1: wakes a pacing writer because a reply is queued
	// Guarded by wlock:
	writeTAT      time.Time   // pacing (see flush): when the next write is due at the steady pace
	writeDeadline time.Time   // the deadline last set on raw
	dying         atomic.Bool // set once the session is being closed: the writer stops writing
	// torn: a write failed, maybe part-way through a frame, so no close frame may follow.
	torn bool

	mu      sync.Mutex
	floor   int64   // events at or below this position were in a sync answer: not pushed again
	closed  bool    // no more frames are queued
	pending []frame // frames waiting for the writer; nil when idle, so idle sessions hold nothing
	// pendingBytes is the size of pending; drained (made on first use) is signalled when the
	// writer takes pending or the session closes (see awaitQueueRoom).
	pendingBytes int
	drained      *sync.Cond
	writing      bool // a writer goroutine is draining pending
	writers      sync.WaitGroup

	// Pipelined sends (pipeline.go).
	sendMu   sync.Mutex
	sendIdle *sync.Cond // signalled when the queue drains or has room
	sendQ    []queuedSend
	sending  bool // a committer goroutine is running
	senders  sync.WaitGroup

	closeOnce sync.Once
	done      chan struct{}
}

func newSession(srv *Server, conn *websocket.Conn) *session {
	s := &session{srv: srv, conn: conn, log: srv.log, raw: conn.NetConn(), wlock: make(chan struct{}, 1),
		urgent: make(chan struct{}, 1),
		done:   make(chan struct{})}
	s.rawSys = rawConnOf(s.raw)
	s.sendIdle = sync.NewCond(&s.sendMu)
	return s
}

// run serves the connection until it closes, then calls ended. The connection is admitted
// (limits, authentication) on the calling goroutine, and read from then on by a fresh one:
// authenticating runs deep (JSON, the token lookup, maybe a read index on the leader), and a
// goroutine keeps the stack it grew while it uses more than a quarter of it, which an idle
// reader parked in gorilla's read path does. The fresh reader idles on the stack it starts
// with: about 3 KiB instead of 7-8 KiB per idle connection (TestIdleConnectionsKeepSmallStacks).
func (s *session) run(ended func()) {
	s.conn.SetReadLimit(int64(s.srv.opts.MaxFrameBytes))
	if !s.admit() {
		s.shutdown()
		ended()
		return
	}
	go func() {
		defer ended()
		s.serve()
	}()
}

// shutdown ends the session: queued sends are committed (their answers dropped if closed),
// the close frame is written, the writer is waited for.
func (s *session) shutdown() {
	s.senders.Wait()
	s.closeWith(websocket.CloseNormalClosure, "")
	s.writers.Wait()
}

// admit applies the unauthenticated-connection limit and authenticates (or, with the token
// in the URL, takes the user's connection slot); false when the connection is refused.
func (s *session) admit() bool {
	if s.user != "" {
		return s.acquireUserSlot("")
	}
	// Counted per address too: else one client, from an address or two, could hold every
	// unauthenticated slot (each for the 10 s an auth frame may take) and keep everyone
	// else from connecting.
	addrKey := "addr " + s.addr
	if !s.srv.unauthenticated.acquire(addrKey, unauthenticatedPerAddress(s.srv.opts.Limits)) {
		s.refuseUnauthenticated("too many unauthenticated connections from this address")
		return false
	}
	if !s.srv.unauthenticated.acquire("", s.srv.opts.Limits.MaxUnauthenticated) {
		s.srv.unauthenticated.release(addrKey)
		s.refuseUnauthenticated("too many unauthenticated connections")
		return false
	}
	ok := s.authenticate() // takes the user's connection slot before answering ok
	s.srv.unauthenticated.release("")
	s.srv.unauthenticated.release(addrKey)
	return ok
}

// unauthenticatedPerAddress is how many of the MaxUnauthenticated slots one address may hold:
// a twentieth (at least one). A client needs one only for the moment its auth frame takes.
func unauthenticatedPerAddress(l Limits) int {
	return max(1, l.MaxUnauthenticated/20)
}

// refuseUnauthenticated turns a connection away for want of an unauthenticated slot: an
// M_LIMIT_EXCEEDED frame, then close 1013.
func (s *session) refuseUnauthenticated(msg string) {
	s.srv.metrics.rateLimited.WithLabelValues("unauthenticated").Inc()
	s.writeRefusalDirect("M_LIMIT_EXCEEDED", msg, map[string]any{"retry_after_ms": 1000})
	s.closeWith(websocket.CloseTryAgainLater, "too many unauthenticated connections")
}

// serve reads and handles the admitted connection's frames until it closes.
func (s *session) serve() {
	defer s.shutdown()
	defer s.srv.connsUser.release(s.user)
	defer s.srv.hub.remove(s)
	if !s.joinHub() {
		return
	}
	s.conn.SetPongHandler(func(string) error {
		return s.conn.SetReadDeadline(time.Now().Add(s.srv.opts.PongTimeout))
	})
	// gorilla would answer pings and closes by writing itself; route them through our writer.
	s.conn.SetPingHandler(func(data string) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.enqueueLocked(newFrame(opPong, []byte(data)))
		return nil
	})
	s.conn.SetCloseHandler(func(code int, text string) error {
		// Echo the client's code, except those that must never be sent on the wire.
		if code == websocket.CloseNoStatusReceived || code == websocket.CloseAbnormalClosure || code == websocket.CloseTLSHandshake {
			code = websocket.CloseNormalClosure
		}
		s.closeWith(code, "")
		return nil
	})
	for {
		s.awaitQueueRoom()
		_ = s.conn.SetReadDeadline(time.Now().Add(s.srv.opts.PongTimeout))
		typ, data, err := s.conn.ReadMessage()
		if err != nil {
			s.readFailed(err)
			return
		}
		s.srv.metrics.framesIn.Inc()
		if typ != websocket.TextMessage {
			s.replyError("", "M_BAD_JSON", "frames are JSON text", nil)
			continue
		}
		s.handle(data)
	}
}

func (s *session) readFailed(err error) {
	if errors.Is(err, websocket.ErrReadLimit) {
		// gorilla already sent close 1009 (message too big).
		s.log.Info("websocket frame over the limit", "user", s.user)
		s.conn.Close()
		return
	}
	if !websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived) {
		s.log.Debug("websocket read ended", "user", s.user, "err", err)
	}
}

// authenticate reads the first frame, which must be a valid auth within authTimeout.
func (s *session) authenticate() bool {
	_ = s.conn.SetReadDeadline(time.Now().Add(authTimeout))
	typ, data, err := s.conn.ReadMessage()
	if err != nil {
		if errors.Is(err, websocket.ErrReadLimit) {
			s.conn.Close()
			return false
		}
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			s.writeRefusalDirect("M_MISSING_TOKEN", "no auth frame within 10 s", nil)
			s.closeWith(closeAuth, "M_MISSING_TOKEN")
		}
		return false
	}
	s.srv.metrics.framesIn.Inc()
	req, ok := decodeAuthFrame(data)
	if !ok || typ != websocket.TextMessage { // frames are text, as serve refuses binary ones
		s.refuseAuth(req.ID, "M_MISSING_TOKEN", "the first frame must be auth")
		return false
	}
	s.sweepsAtAuth = s.srv.hub.sweepsBegun()
	user, ok, unavailable := s.srv.userByToken(req.Token)
	if !ok {
		if unavailable {
			// Not close 4001: the token may well be valid; the client retries (elsewhere).
			s.writeErrorDirect(req.ID, "M_UNAVAILABLE", "this node cannot reach a quorum; retry", nil)
			s.closeWith(websocket.CloseTryAgainLater, "no quorum")
			return false
		}
		s.refuseAuth(req.ID, "M_UNKNOWN_TOKEN", "unknown or revoked token")
		return false
	}
	s.user, s.tokenHash = user, hashToken(req.Token)
	if !s.acquireUserSlot(req.ID) {
		return false
	}
	s.writeDirect(okFrame(req.ID, map[string]any{"user_id": user}))
	return true
}

// joinHub registers the session with the hub; false when it was closed instead, having joined
// after a sweep it should have met (missedSweep). Not inlined: the reader idles below serve's
// frame, which must stay small enough for the idle path to fit the goroutine's first stack
// (TestIdleConnectionsKeepSmallStacks).
//
//go:noinline
func (s *session) joinHub() bool {
	if hook := s.srv.beforeHubAdd.Load(); hook != nil {
		(*hook)(s)
	}
	s.srv.hub.add(s)
	if code, reason := s.missedSweep(); code != 0 {
		s.closeWith(code, reason)
		return false
	}
	return true
}

// missedSweep looks again, once the session is in the hub, at what the hub's sweeps close
// sessions for: a logout of its token or a snapshot install applied after its token was looked
// up but before it joined the hub swept the hub without it. The close code and reason to end
// the session with, or 0 when it may stay.
//
// It runs on the session's reader, which idles on the stack it grows: only a logout swept in
// the meantime (rare) makes it read the state.
func (s *session) missedSweep() (int, string) {
	now := s.srv.hub.sweepsBegun()
	if now.restores != s.sweepsAtAuth.restores {
		return closeResync, resyncReason
	}
	if now.revocations != s.sweepsAtAuth.revocations && !s.tokenStillValid() {
		return closeAuth, "token revoked"
	}
	return 0, ""
}

func (s *session) tokenStillValid() bool {
	_, ok := s.srv.cluster.Store().UserByToken(s.tokenHash)
	return ok
}

// authFrame is a connection's first frame: {"op":"auth","id":…,"token":…}.
type authFrame struct {
	Op    string `json:"op"`
	ID    string `json:"id"`
	Token string `json:"token"`
}

// decodeAuthFrame decodes the first frame; ok only when it is JSON whose op is "auth". The
// frame is returned also when not ok: its id (whatever was decoded of it) goes in the refusal.
func decodeAuthFrame(data []byte) (req authFrame, ok bool) {
	if err := json.Unmarshal(data, &req); err != nil || req.Op != "auth" {
		return req, false
	}
	return req, true
}

// acquireUserSlot takes one of the user's connections (limits.connections_per_user). Over the
// limit, the auth request (id) is answered M_LIMIT_EXCEEDED, never ok, and the connection is
// closed with 1008.
//
// Connections are also rate limited per user, at the per-user write rate in a bucket of their
// own: a user's first connection and the end of its last are presence changes, pushed to
// everyone who shares a room with them and sent to the org's other nodes and the rooms' other
// orgs, so connecting and disconnecting in a loop flooded them all.
func (s *session) acquireUserSlot(id string) bool {
	if wait, ok := s.srv.allowWrite(connectBucket + s.user); !ok {
		s.srv.metrics.rateLimited.WithLabelValues("connect").Inc()
		s.writeErrorDirect(id, "M_LIMIT_EXCEEDED", "too many connections for this user, too fast", map[string]any{"retry_after_ms": max(wait.Milliseconds(), 1)})
		s.closeWith(websocket.ClosePolicyViolation, "too many connections")
		return false
	}
	if s.srv.connsUser.acquire(s.user, s.srv.opts.Limits.ConnsPerUser) {
		return true
	}
	s.srv.metrics.rateLimited.WithLabelValues("connections_per_user").Inc()
	s.writeErrorDirect(id, "M_LIMIT_EXCEEDED", "too many connections for this user", map[string]any{"retry_after_ms": 1000})
	s.closeWith(websocket.ClosePolicyViolation, "too many connections")
	return false
}

// connectBucket prefixes a user id to name the user's connection bucket among the per-user
// write buckets (Server.allowWrite): no user id starts with it.
const connectBucket = "connect "

func (s *session) refuseAuth(id, code, msg string) {
	s.writeErrorDirect(id, code, msg, nil)
	s.closeWith(closeAuth, code)
}

// writeErrorDirect writes an error answer before the writer goroutine exists, counting it in
// parley_op_errors_total as replyError does.
func (s *session) writeErrorDirect(id, code, msg string, extra map[string]any) {
	s.srv.metrics.opErrors.WithLabelValues(code).Inc()
	s.writeDirect(errorFrame(id, code, msg, extra))
}

// writeRefusalDirect is writeErrorDirect for an error that answers no frame (refusalFrame).
func (s *session) writeRefusalDirect(code, msg string, extra map[string]any) {
	s.srv.metrics.opErrors.WithLabelValues(code).Inc()
	s.writeDirect(refusalFrame(code, msg, extra))
}

// writeDirect writes before the writer goroutine exists.
func (s *session) writeDirect(payload []byte) {
	if s.writeFrames([]frame{textFrame(payload)}) {
		s.srv.metrics.framesOut.Inc()
	}
}

// writeFrames writes frames in one write call, under the write lock. On a plain TCP socket
// whatever the socket does not take at once is written as writeRestLocked does, so a close
// stops the write at a frame boundary; elsewhere (TLS) one write carries them all.
func (s *session) writeFrames(frames []frame) bool {
	bp := joinFrames(frames)
	s.wlock <- struct{}{}
	now := time.Now()
	s.moveWriteDeadline(now)
	var err error
	if s.rawSys != nil {
		var n int
		n, err = writeNow(s.rawSys, *bp)
		if errors.Is(err, errWouldBlock) {
			err = s.writeRestLocked(frames, n)
		}
	} else {
		_, err = s.raw.Write(*bp)
	}
	if err != nil {
		s.torn = true
	}
	s.paced(now)
	<-s.wlock
	putWriteBuf(bp)
	return err == nil
}

// restPiece bounds the pieces writeRestLocked writes between looks at s.dying.
const restPiece = 32 << 10

// writeRestLocked writes what a write that does not wait left of frames (it wrote their first
// n bytes), waiting for the socket as needed; the caller holds wlock. The frame being written
// is finished first, then the rest goes in pieces of whole frames; once the session is dying
// (a close, such as a slow consumer's cut, is waiting for the write lock) the pieces not yet
// begun are dropped, so the close frame follows promptly and never inside a frame. An error
// sets s.torn.
func (s *session) writeRestLocked(frames []frame, n int) error {
	for len(frames) > 0 && n >= len(frames[0]) {
		n -= len(frames[0])
		frames = frames[1:]
	}
	if len(frames) > 0 && n > 0 { // the frame being written: its end is owed, dying or not
		if !s.dying.Load() {
			s.moveWriteDeadline(time.Now())
		}
		if _, err := s.raw.Write(frames[0][n:]); err != nil {
			s.torn = true
			return err
		}
		frames = frames[1:]
	}
	for len(frames) > 0 && !s.dying.Load() {
		k, size := 1, len(frames[0])
		for k < len(frames) && size+len(frames[k]) <= restPiece {
			size += len(frames[k])
			k++
		}
		bp := joinFrames(frames[:k])
		s.moveWriteDeadline(time.Now())
		_, err := s.raw.Write(*bp)
		putWriteBuf(bp)
		if err != nil {
			s.torn = true
			return err
		}
		frames = frames[k:]
	}
	return nil
}

// joinFrames copies frames into one pooled buffer (putWriteBuf returns it).
func joinFrames(frames []frame) *[]byte {
	bp := writeBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	for _, f := range frames {
		buf = append(buf, f...)
	}
	*bp = buf
	return bp
}

func putWriteBuf(bp *[]byte) {
	if cap(*bp) <= 256<<10 { // do not keep giant buffers around
		*bp = (*bp)[:0]
		writeBufs.Put(bp)
	}
}

// moveWriteDeadline keeps raw's write deadline writeTimeout ahead; the caller holds wlock.
// Moving a deadline costs a runtime timer update; under load a connection writes hundreds
// of times a second, so the deadline moves only once it is closer than writeTimeout-1s.
func (s *session) moveWriteDeadline(now time.Time) {
	if dl := s.writeDeadline; now.Add(writeTimeout - time.Second).After(dl) {
		s.writeDeadline = now.Add(writeTimeout)
		_ = s.raw.SetWriteDeadline(s.writeDeadline)
	}
}

// paced moves the pacing clock past a write made at now; the caller holds wlock.
func (s *session) paced(now time.Time) {
	if d := s.srv.opts.WriteDelay; d > 0 {
		s.writeTAT = paceAfterWrite(s.writeTAT, now, d)
	}
}

// pacingTimers are reused by writers: under load every connection waits once per write.
var pacingTimers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// writeBurst is how many writes in a row a connection may make faster than one per
// WriteDelay before pacing holds pushes back (see paceWait).
const writeBurst = 4

// paceAfterWrite moves a connection's pacing clock past a write made at now: the next write
// is due one delay after the later of the previous due time and now (GCRA, the "virtual
// scheduling" form of a token bucket).
func paceAfterWrite(tat, now time.Time, delay time.Duration) time.Time {
	if tat.Before(now) {
		tat = now
	}
	return tat.Add(delay)
}

// paceWait is how long a push must wait before it may be written: nothing while the
// connection has written less than writeBurst times ahead of its steady pace.
func paceWait(tat, now time.Time, delay time.Duration) time.Duration {
	return tat.Add(-(writeBurst - 1) * delay).Sub(now)
}

// flush is the session's writer. It runs only while frames are pending (an idle connection
// has no writer goroutine) and sends everything queued in one write each round.
//
// Pacing: a connection writes at most once per WriteDelay on average. Under load, pushes wait
// for the connection's next slot and leave together, so one write(2) (about 5-15 µs here,
// the node's main cost) carries a burst instead of one frame. Up to writeBurst writes may
// come early: with a strict one-write-per-slot rule, events that arrive about once per slot
// (a busy room) queue behind the slot chain, whose lag drifts like a random walk and added
// 5 ms on average at 100 events/s; the allowance absorbs that jitter. The first push after a
// quiet spell always goes at once.
func (s *session) flush() {
	defer s.writers.Done()
	for {
		if d := s.srv.opts.WriteDelay; d > 0 {
			s.wlock <- struct{}{}
			tat := s.writeTAT
			<-s.wlock
			if wait := paceWait(tat, time.Now(), d); wait > 0 {
				t := pacingTimers.Get().(*time.Timer)
				t.Reset(wait)
				select {
				case <-t.C:
				case <-s.urgent: // a reply is waiting: its client is blocked on it
				}
				t.Stop() // since Go 1.23 a stopped timer's channel holds no stale tick
				pacingTimers.Put(t)
			}
		}
		batch := s.takePending()
		if batch == nil {
			return
		}
		if !s.writeFrames(batch) {
			s.writeFailed()
			return
		}
		s.srv.metrics.framesOut.Add(float64(len(batch)))
		// Nothing new arrived during the write: end now rather than sleep out the slot on a
		// timer only to find nothing (one timer per write at steady load). The next push
		// starts a writer, which waits for the rest of the slot itself.
		if !s.keepWriting() {
			return
		}
	}
}

// writeFailed ends the writer role after a failed write and closes the connection; the
// writer still owes its s.writers.Done.
func (s *session) writeFailed() {
	s.mu.Lock()
	s.writing = false
	s.mu.Unlock()
	go s.closeWith(websocket.CloseGoingAway, "")
}

// maxQueuedBytes bounds what a connection's reader lets pile up unwritten: while more than
// this waits for the writer, the next request is not read (back-pressure on the socket).
// SendQueue counts frames, and one small request can ask for megabytes (a history page of 100
// events, a sync): a client that sent such requests without reading the answers made the
// node queue them all in memory until it was cut off, up to SendQueue of them.
const maxQueuedBytes = 1 << 20

// awaitQueueRoom waits until the frames queued for the client are at most maxQueuedBytes,
// so that the reader may take the next request, or the session is closing (then the read
// that follows fails once the connection is closed, and the close, such as a slow consumer's,
// is the one already under way).
func (s *session) awaitQueueRoom() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.pendingBytes > maxQueuedBytes && !s.closed {
		if s.drained == nil {
			s.drained = sync.NewCond(&s.mu)
		}
		s.drained.Wait()
	}
}

// dropPendingLocked empties the queue and wakes a reader waiting for room; the caller holds s.mu.
func (s *session) dropPendingLocked() {
	s.pending = nil
	s.pendingBytes = 0
	if s.drained != nil {
		s.drained.Broadcast()
	}
}

// takePending takes the queued frames for a write. With none queued, or the session closing,
// the writer role ends instead and it returns nil.
func (s *session) takePending() []frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	batch := s.pending
	s.dropPendingLocked()
	if len(batch) == 0 || s.dying.Load() {
		s.writing = false
		return nil
	}
	return batch
}

// keepWriting reports whether frames arrived during the last write; if none did, the writer
// role ends.
func (s *session) keepWriting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 {
		s.writing = false
		return false
	}
	return true
}

// enqueueLocked queues a frame and wakes the writer; the caller holds s.mu. A client that lets
// SendQueue frames pile up is cut off rather than slowing the room down.
func (s *session) enqueueLocked(f frame) {
	if s.closed {
		return
	}
	if len(s.pending) >= s.srv.opts.SendQueue {
		s.closed = true
		s.dropPendingLocked()
		s.srv.metrics.slowConsumers.Inc()
		s.log.Info("slow consumer disconnected", "user", s.user)
		go s.closeSlow()
		return
	}
	s.pending = append(s.pending, f)
	s.pendingBytes += len(f)
	if !s.writing {
		s.writing = true
		s.writers.Add(1)
		if s.rawSys == nil || s.srv.writes == nil || !s.srv.writes.schedule(s) {
			go s.flush()
		}
	}
}

// ping queues a keep-alive ping (the hub pings every session every Options.PingInterval).
func (s *session) ping() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enqueueLocked(pingFrame)
}

var pingFrame = newFrame(opPing, nil)

// pushEvent queues a pushed frame unless it is at or below the sync floor.
func (s *session) pushEvent(pos int64, f frame) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pos != 0 && pos <= s.floor {
		return
	}
	s.enqueueLocked(f)
}

// reply queues the answer to a request. Replies are not paced like pushes: the client waits.
func (s *session) reply(payload []byte) {
	s.mu.Lock()
	s.enqueueLocked(textFrame(payload))
	s.mu.Unlock()
	s.wakeWriter()
}

// wakeWriter ends a pacing writer's wait: a reply is queued.
func (s *session) wakeWriter() {
	select {
	case s.urgent <- struct{}{}:
	default:
	}
}

func (s *session) replyError(id, code, msg string, extra map[string]any) {
	s.srv.metrics.opErrors.WithLabelValues(code).Inc()
	s.reply(errorFrame(id, code, msg, extra))
}

// closeWith sends a close frame (best effort) and closes the connection, once.
func (s *session) closeWith(code int, reason string) {
	s.closeOnce.Do(func() { s.finish(code, reason, false) })
}

// closeSlow cuts off a slow consumer: close 1008 "slow consumer", delivered if the client
// reads again before the write deadline. Its queue was dropped already (enqueueLocked).
func (s *session) closeSlow() {
	s.closeOnce.Do(func() { s.finish(websocket.ClosePolicyViolation, "slow consumer", true) })
}

// finish writes the close frame and closes the connection; closeOnce runs it.
//
// A writer may be blocked on a client that stopped reading. It stops at the end of the frame
// it is writing (writeRestLocked) once dying is set, and its write fails at the write
// deadline at the latest (TLS: the whole write it started). The close frame waits for it:
// for up to 3 s; for a slow consumer (patient) until that deadline, so that a client that
// reads again before then gets the close frame. The close frame has a deadline of its own,
// closeFrameTimeout, or for a slow consumer the data's write deadline when that is later.
// Never after a failed write (s.torn), which may have ended inside a frame.
func (s *session) finish(code int, reason string, patient bool) {
	s.mu.Lock()
	s.closed = true
	s.dropPendingLocked()
	s.mu.Unlock()
	s.dying.Store(true)
	wait := 3 * time.Second
	if patient {
		wait = writeTimeout + time.Second // the holder's write ends by its deadline
	}
	t := time.NewTimer(wait)
	select {
	case s.wlock <- struct{}{}:
		if !s.torn {
			dl := time.Now().Add(closeFrameTimeout)
			if patient && s.writeDeadline.After(dl) {
				dl = s.writeDeadline
			}
			s.writeDeadline = dl
			_ = s.raw.SetWriteDeadline(dl)
			if _, err := s.raw.Write(closeFrame(code, reason)); err != nil {
				s.torn = true
			}
		}
		<-s.wlock
	case <-t.C:
	}
	t.Stop()
	if s.conn != nil {
		s.conn.Close()
	} else {
		s.raw.Close() // sessions built by tests over a bare net.Conn
	}
	close(s.done)
}

func okFrame(id string, result map[string]any) []byte {
	// Strings (the id, the keys, most values: a send's event_id) are encoded without
	// reflection, byte for byte as json.Marshal would: one ok per message sent.
	b := make([]byte, 0, 64+len(id))
	b = append(b, `{"op":"ok","id":`...)
	b = event.AppendMarshalString(b, id)
	for k, v := range result {
		field := len(b)
		b = append(b, ',')
		b = event.AppendMarshalString(b, k)
		b = append(b, ':')
		if s, ok := v.(string); ok {
			b = event.AppendMarshalString(b, s)
		} else if vj, err := json.Marshal(v); err == nil {
			b = append(b, vj...)
		} else {
			b = b[:field] // a value json cannot encode is left out
		}
	}
	return append(b, '}')
}

// errorFrame is the error answer to a frame: its id goes in always, "" too (an id of "" or
// none that could be read), exactly as okFrame puts it, so a client matching answers by id
// finds an error where it would find an ok.
func errorFrame(id, code, msg string, extra map[string]any) []byte {
	return encodeError(map[string]any{"op": "error", "id": id, "code": code, "message": msg}, extra)
}

// refusalFrame is an error that answers no frame (a connection refused before its first
// frame, or whose auth frame never came): it has no id to carry.
func refusalFrame(code, msg string, extra map[string]any) []byte {
	return encodeError(map[string]any{"op": "error", "code": code, "message": msg}, extra)
}

func encodeError(m, extra map[string]any) []byte {
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return b
}
