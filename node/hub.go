package node

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// hub fans committed changes and ephemeral signals out to this node's WebSocket sessions.
// Changes arrive in log order from the FSM and are pushed in that order by one dispatcher
// goroutine; each event is encoded once per variant, not once per receiver.
type hub struct {
	ready   atomic.Bool // store and peers are set; signals from peers are handled
	nodeID  string
	log     *slog.Logger
	store   *state.Store
	metrics *metrics

	mu       sync.RWMutex
	sessions map[string]map[*session]struct{} // user -> live sessions
	// restores and revocations count the snapshot installs (resyncAll) and logouts (revoke)
	// swept, each counted before its sweep: a session added after a sweep it missed finds the
	// count changed (session.missedSweep).
	restores, revocations atomic.Uint64

	queue chan *state.Applied
	stop  chan struct{}
	wg    sync.WaitGroup

	typingMu sync.Mutex
	typing   map[string]map[string]time.Time // room -> user -> expiry

	// peers carries typing and presence to the other nodes of the org (nil: single node).
	peers func(msg []byte)

	remoteMu sync.Mutex
	remote   map[string]*remoteNode // node id -> users online there

	// orgs is the presence of other orgs' users; onPresence tells federation of this org's
	// users' changes (presence_remote.go).
	orgs       *orgPresence
	onPresence atomic.Pointer[func(user, status string)]
}

// remoteNode is another node's online users, as it last announced them.
type remoteNode struct {
	users map[string]bool
	seen  time.Time
}

// newHub starts the hub's goroutines; every session is pinged every ping.
func newHub(store *state.Store, m *metrics, log *slog.Logger, ping time.Duration) *hub {
	h := &hub{log: log, store: store, metrics: m,
		sessions: make(map[string]map[*session]struct{}),
		queue:    make(chan *state.Applied, 4096),
		stop:     make(chan struct{}),
		typing:   make(map[string]map[string]time.Time),
		remote:   make(map[string]*remoteNode),
		orgs:     newOrgPresence()}
	h.wg.Add(4)
	go h.dispatch()
	go h.expireTyping()
	go h.refreshPresence()
	go h.pingAll(ping)
	return h
}

func (h *hub) close() {
	close(h.stop)
	h.wg.Wait()
}

// applied is the FSM observer. It blocks when the dispatcher is far behind: back-pressure on
// applying is better than losing pushes.
func (h *hub) applied(a *state.Applied) {
	// Counted in before the send and out by the dispatcher: two Sets of len(h.queue) could land
	// in the wrong order and leave the gauge above an empty queue.
	h.metrics.fanoutQueue.Inc()
	select {
	case h.queue <- a:
	case <-h.stop:
		h.metrics.fanoutQueue.Dec()
	}
}

func (h *hub) dispatch() {
	defer h.wg.Done()
	for {
		select {
		case a := <-h.queue:
			h.metrics.fanoutQueue.Dec()
			h.deliver(a)
		case <-h.stop:
			return
		}
	}
}

func (h *hub) deliver(a *state.Applied) {
	if a.Restored {
		h.resyncAll()
		return
	}
	if !a.Replayed { // a restart's replay of the node's own log commits nothing new
		h.metrics.eventsCommitted.Add(float64(len(a.Events)))
	}
	for i := range a.Events {
		h.deliverEvent(&a.Events[i])
	}
	for _, r := range a.Receipts {
		frame, _ := json.Marshal(map[string]string{"op": "receipt", "room_id": r.Receipt.RoomID,
			"user_id": r.Receipt.UserID, "event_id": r.Receipt.EventID})
		h.toUsers(r.Recipients, "", newPrepared(frame), 0)
	}
	for _, tok := range a.RevokedTokens {
		h.revoke(tok)
	}
}

// newPrepared frames a push once for all its receivers.
func newPrepared(data []byte) frame { return textFrame(data) }

// eventPrefix and eventSuffix wrap an event's JSON as a push.
const eventPrefix, eventSuffix = `{"op":"event","event":`, `}`

// eventFrame is the WebSocket frame pushing the event whose JSON is the parts written one after
// the other: built in one allocation, with no copy of the JSON before it.
func eventFrame(parts ...[]byte) frame {
	n := len(eventPrefix) + len(eventSuffix)
	for _, p := range parts {
		n += len(p)
	}
	f := appendFrameHeader(make([]byte, 0, frameHeaderLen(n)+n), opText, n)
	f = append(f, eventPrefix...)
	for _, p := range parts {
		f = append(f, p...)
	}
	return append(f, eventSuffix...)
}

// publicParts is the stored JSON of e without unsigned.txn_id, which only the sender's own
// sessions may see, as two pieces written one after the other. AppendJSON writes unsigned
// last, so it is cut off the end (head is a prefix of stored, tail closes the object: nothing
// is copied); anything else in unsigned means encoding the event again.
func publicParts(stored []byte, e *event.Event) (head, tail []byte) {
	if e.Unsigned == nil || e.Unsigned.TxnID == "" {
		return stored, nil
	}
	if e.Unsigned.RedactedBecause == nil {
		txn, _ := json.Marshal(e.Unsigned.TxnID) // the same escaping as AppendJSON
		suffix := append(append([]byte(`,"unsigned":{"txn_id":`), txn...), '}', '}')
		if bytes.HasSuffix(stored, suffix) {
			return stored[:len(stored)-len(suffix)], closeBrace
		}
	}
	c := *e
	c.Unsigned = nil
	b, err := c.AppendJSON(nil)
	if err != nil {
		panic(err) // committed events hold only JSON-safe values
	}
	return b, nil
}

var closeBrace = []byte{'}'}

// eventPush frames one event for its receivers, each variant on first need: the sender's own
// sessions get the stored JSON (with unsigned.txn_id), everyone else the public JSON. A node
// where nobody needs a variant never builds it (in a cluster, most nodes hold no session of the
// sender).
type eventPush struct {
	stored      []byte
	e           *event.Event
	own, public frame
}

func (p *eventPush) frameFor(user string) frame {
	if user == p.e.Sender {
		if p.own == nil {
			p.own = eventFrame(p.stored)
		}
		return p.own
	}
	if p.public == nil {
		head, tail := publicParts(p.stored, p.e)
		if len(head) == len(p.stored) && tail == nil {
			p.public = p.frameFor(p.e.Sender) // no txn_id: both variants are the same bytes
		} else {
			p.public = eventFrame(head, tail)
		}
	}
	return p.public
}

func (h *hub) deliverEvent(d *state.Delivery) {
	push := &eventPush{stored: d.JSON, e: d.Event}
	pos := d.Event.StreamPos
	h.mu.RLock()
	defer h.mu.RUnlock()
	sent := false
	for _, u := range d.Recipients {
		if u == d.Target {
			sent = true
		}
		h.pushLocked(u, push, pos)
	}
	if d.Target != "" && !sent {
		h.pushLocked(d.Target, push, pos)
	}
}

func (h *hub) pushLocked(user string, push *eventPush, pos int64) {
	set := h.sessions[user]
	if len(set) == 0 {
		return
	}
	msg := push.frameFor(user)
	for s := range set {
		s.pushEvent(pos, msg)
	}
}

// toUsers pushes one frame to every session of the given users except skip.
func (h *hub) toUsers(users []string, skip string, pm frame, pos int64) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, u := range users {
		if u == skip {
			continue
		}
		for s := range h.sessions[u] {
			s.pushEvent(pos, pm)
		}
	}
}

// resyncAll closes every session after the state was replaced by a snapshot: the events in
// between were never pushed, and logouts among them never closed their sessions, so each
// client reconnects, is authenticated against the new state, and syncs from its position.
func (h *hub) resyncAll() {
	h.restores.Add(1)
	all := h.sessionsWhere(func(*session) bool { return true })
	if len(all) > 0 {
		h.log.Warn("state replaced by a snapshot from the leader: closing connections so clients sync", "connections", len(all))
	}
	for _, s := range all {
		s.stopQueueing()
		go s.closeWith(closeResync, resyncReason) // not on the dispatcher
	}
}

func (h *hub) revoke(tokenHash string) {
	h.revocations.Add(1)
	victims := h.sessionsWhere(func(s *session) bool { return s.tokenHash == tokenHash })
	for _, s := range victims {
		s.stopQueueing()
		go s.closeWith(closeAuth, "token revoked") // may wait on a stuck writer: not on the dispatcher
	}
}

// stopQueueing makes s take no more frames, at once, on the dispatcher: the close that a sweep
// starts runs on a goroutine of its own, and until it did, the pushes of the changes delivered
// after the sweep still reached s and could be written. After a snapshot install those come
// after a gap (the events the snapshot covered were never pushed), and a client resuming from
// the last stream_pos it saw skipped the gap; after a logout they went to a revoked token.
// What is queued already (older pushes) may still go out; the close frame is written directly.
func (s *session) stopQueueing() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// sweepCounts is how many sweeps of each kind the hub had begun at some moment.
type sweepCounts struct{ restores, revocations uint64 }

func (h *hub) sweepsBegun() sweepCounts {
	return sweepCounts{restores: h.restores.Load(), revocations: h.revocations.Load()}
}

// sessionsWhere returns the registered sessions for which keep is true.
func (h *hub) sessionsWhere(keep func(*session) bool) []*session {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []*session
	for _, set := range h.sessions {
		for s := range set {
			if keep(s) {
				out = append(out, s)
			}
		}
	}
	return out
}

// add registers an authenticated session; the first one of a user makes them online.
func (h *hub) add(s *session) {
	h.mu.Lock()
	set := h.sessions[s.user]
	first := len(set) == 0
	if set == nil {
		set = make(map[*session]struct{})
		h.sessions[s.user] = set
	}
	set[s] = struct{}{}
	h.mu.Unlock()
	if first {
		h.announcePresence(s.user, true)
		if !h.onlineRemotely(s.user) {
			h.presence(s.user, "online")
		}
	}
}

func (h *hub) remove(s *session) {
	h.mu.Lock()
	set := h.sessions[s.user]
	if _, ok := set[s]; !ok {
		h.mu.Unlock()
		return
	}
	delete(set, s)
	last := len(set) == 0
	if last {
		delete(h.sessions, s.user)
	}
	h.mu.Unlock()
	if last {
		h.announcePresence(s.user, false)
		if !h.onlineRemotely(s.user) {
			h.presence(s.user, "offline")
		}
	}
}

// sessionCount is the number of sessions of a user on this node.
func (h *hub) sessionCount(user string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.sessions[user])
}

// online reports whether a user has a session on any node of the org.
func (h *hub) online(user string) bool { return h.sessionCount(user) > 0 || h.onlineRemotely(user) }

// presence is an org-wide change of a local user's presence: pushed here, and passed to
// federation (which sends it to other orgs when this node leads).
func (h *hub) presence(user, status string) {
	h.pushPresence(user, status)
	if f := h.onPresence.Load(); f != nil {
		(*f)(user, status)
	}
}

// pushPresence tells everyone who shares a room with user (and user's other sessions).
func (h *hub) pushPresence(user, status string) {
	rooms, err := h.store.UserRooms(user)
	if err != nil {
		h.log.Warn("presence: list rooms", "user", user, "err", err)
		return
	}
	seen := map[string]bool{user: true}
	audience := []string{user}
	for _, r := range rooms {
		if r.Membership != state.Join {
			continue
		}
		for _, m := range h.store.Joined(r.RoomID) {
			if !seen[m] {
				seen[m] = true
				audience = append(audience, m)
			}
		}
	}
	frame, _ := json.Marshal(map[string]string{"op": "presence", "user_id": user, "presence": status})
	h.toUsers(audience, "", newPrepared(frame), 0)
}

// setTyping records a typing change and tells the room's members when the list changed.
func (h *hub) setTyping(room, user string, typing bool, timeout time.Duration) {
	h.typingMu.Lock()
	users := h.typing[room]
	_, was := users[user]
	if typing {
		if users == nil {
			users = make(map[string]time.Time)
			h.typing[room] = users
		}
		users[user] = time.Now().Add(timeout)
	} else {
		delete(users, user)
		if len(users) == 0 {
			delete(h.typing, room)
		}
	}
	h.typingMu.Unlock()
	if was != typing {
		h.pushTyping(room)
	}
}

// setLocalTyping is a typing change made on this node: applied here and sent to the peers.
func (h *hub) setLocalTyping(room, user string, typing bool, timeout time.Duration) {
	h.setTyping(room, user, typing, timeout)
	h.sendPeers(peerSignal{Kind: "typing", Room: room, User: user, Typing: typing, TimeoutMS: timeout.Milliseconds()})
}

func (h *hub) typingUsers(room string) []string {
	h.typingMu.Lock()
	defer h.typingMu.Unlock()
	ids := make([]string, 0, len(h.typing[room]))
	for u := range h.typing[room] {
		ids = append(ids, u)
	}
	sort.Strings(ids)
	return ids
}

func (h *hub) pushTyping(room string) {
	frame, _ := json.Marshal(map[string]any{"op": "typing", "room_id": room, "user_ids": h.typingUsers(room)})
	h.toUsers(h.store.Joined(room), "", newPrepared(frame), 0)
}

func (h *hub) expireTyping() {
	defer h.wg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case now := <-t.C:
			var changed []string
			h.typingMu.Lock()
			for room, users := range h.typing {
				for u, exp := range users {
					if now.After(exp) {
						delete(users, u)
						if len(changed) == 0 || changed[len(changed)-1] != room {
							changed = append(changed, room)
						}
					}
				}
				if len(users) == 0 {
					delete(h.typing, room)
				}
			}
			h.typingMu.Unlock()
			for _, room := range changed {
				h.pushTyping(room)
			}
		}
	}
}

// pingAll pings every session every interval on one timer, instead of a timer per connection.
func (h *hub) pingAll(interval time.Duration) {
	defer h.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			h.mu.RLock()
			for _, set := range h.sessions {
				for s := range set {
					s.ping()
				}
			}
			h.mu.RUnlock()
		}
	}
}
