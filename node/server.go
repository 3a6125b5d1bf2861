// Package node is what one Parley process serves: the HTTP API, WebSocket sessions speaking
// the client protocol, the per-user fan-out of committed events, and the room rules checked
// before a write is proposed to the org's Raft cluster.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"github.com/parley-chat/parley/federation"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"
)

// Options configure a node's client-facing side.
type Options struct {
	Org              string
	PublicURL        string   // its origin is always allowed
	Listen           string   // http.listen; when loopback, http://localhost:PORT and http://127.0.0.1:PORT are allowed origins
	AllowedOrigins   []string // extra browser origins
	MaxFrameBytes    int
	RegistrationOpen bool
	SendPerSecond    float64
	SendBurst        int
	ClusterSecret    string // required by the cluster admin routes when set
	KeyFile          string // federation.key_file; empty: the replicated org key
	// PreviousKeys are the org's public keys from before a rotation (federation.previous_keys),
	// published beside the current one for peers to configure.
	PreviousKeys []string

	Limits Limits // abuse limits

	PasswordCost int           // bcrypt cost; tests lower it
	SendQueue    int           // frames queued per connection before it counts as slow
	WriteDelay   time.Duration // how long a writer waits for more frames before writing (coalescing)
	WriteTimeout time.Duration // how long a write waits for a quorum before M_UNAVAILABLE
	PingInterval time.Duration // how often every WebSocket is pinged (default 30 s)
	PongTimeout  time.Duration // a WebSocket silent this long (no pong, no frame) is dropped (default 60 s)

	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.MaxFrameBytes == 0 {
		o.MaxFrameBytes = 64 << 10
	}
	if o.SendPerSecond == 0 {
		o.SendPerSecond = 10
	}
	if o.SendBurst == 0 {
		o.SendBurst = 50
	}
	if o.PasswordCost == 0 {
		o.PasswordCost = bcrypt.DefaultCost
	}
	if o.SendQueue == 0 {
		o.SendQueue = 4096
	}
	if o.WriteDelay < 0 {
		o.WriteDelay = 0
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 30 * time.Second
	}
	if o.PongTimeout <= 0 {
		o.PongTimeout = 60 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Limits.defaults()
}

// Server is one running node: its Raft member, fan-out hub and HTTP/WebSocket front.
type Server struct {
	opts    Options
	log     *slog.Logger
	cluster *consensus.Cluster
	hub     *hub
	writes  *writePool  // writes the sessions' queued frames (writepool.go)
	clock   originClock // the origin_ts of the events this node builds (originclock.go)
	// stamp, when set (by tests), replaces clock.next.
	stamp   func(sender string) int64
	metrics *metrics
	http    *http.Server
	keys    *federation.Keys
	remote  RemoteRooms // nil until federation is configured
	bg      context.CancelFunc
	bgDone  chan struct{}
	upgr    websocket.Upgrader
	origins map[string]bool

	// sendLimit is the per-user write rate (allowWrite). A bucket per user who ever wrote, kept
	// for good, grew with every account and every connect bucket; idle ones are swept.
	sendLimit *keyedLimiter

	loginAcct, loginIP, registerIP, roomsUser, joinsUser *keyedLimiter
	connsUser, connsIP                                   *counter
	// hashSlots bounds concurrent password hashing: bcrypt floods must not starve Raft.
	hashSlots       chan struct{}
	unauthenticated *counter

	catchUps catchUps // read indexes shared by concurrent requests (catchUp)

	connMu sync.Mutex
	conns  map[*session]struct{}
	connWG sync.WaitGroup
	// shutting is set (under connMu) once Shutdown began: a WebSocket upgraded from then on is
	// closed at once. net/http stops tracking a connection when it is hijacked, so an upgrade
	// under way could otherwise register its session after closeConns and outlive the node.
	shutting bool

	// beforeHubAdd, when set (tests), runs as an authenticated session is about to join the hub.
	beforeHubAdd atomic.Pointer[func(*session)]
}

// New opens the node's state and Raft member and prepares the HTTP handlers. An Observer in
// copts is called for every applied change before the node's own.
func New(opts Options, copts consensus.Options) (*Server, error) {
	opts.defaults()
	srv := &Server{opts: opts, log: opts.Logger, metrics: newMetrics(),
		sendLimit: newRateLimiter(rate.Limit(opts.SendPerSecond), opts.SendBurst), conns: make(map[*session]struct{}),
		loginAcct:  newKeyedLimiter(opts.Limits.LoginPerMinute, time.Minute),
		loginIP:    newKeyedLimiter(opts.Limits.LoginPerMinute, time.Minute),
		registerIP: newKeyedLimiter(opts.Limits.RegisterPerHour, time.Hour),
		roomsUser:  newKeyedLimiter(opts.Limits.RoomsPerHour, time.Hour),
		joinsUser:  newKeyedLimiter(opts.Limits.JoinsPerHour, time.Hour),
		connsUser:  newCounter(), connsIP: newCounter(), unauthenticated: newCounter(),
		hashSlots: make(chan struct{}, max(1, runtime.NumCPU()/2))}
	// The hub exists before Raft starts: replayed entries flow through it (to nobody yet).
	h := newHub(nil, srv.metrics, opts.Logger, opts.PingInterval)
	h.nodeID = copts.NodeID
	copts.OnEphemeral = h.fromPeer
	copts.Logger = opts.Logger
	observe := copts.Observer // the caller's own, if any: called first
	copts.Observer = func(a *state.Applied) {
		if observe != nil {
			observe(a)
		}
		h.applied(a)
	}
	copts.OnBatch = func(entries, commands int) { srv.metrics.applyEntries.Observe(float64(entries)) }
	copts.OnCommit = func(seconds, applyWaitSeconds float64, commands int) {
		srv.metrics.commitSeconds.Observe(seconds)
		srv.metrics.applyWaitSeconds.Observe(applyWaitSeconds)
		srv.metrics.batchCommands.Observe(float64(commands))
	}
	copts.OnLogStore = func(seconds float64, entries int) { srv.metrics.logStoreSeconds.Observe(seconds) }
	cluster, err := consensus.Open(copts)
	if err != nil {
		h.close()
		return nil, err
	}
	srv.cluster = cluster
	srv.metrics.watchState(cluster.Store())
	h.store = cluster.Store() // read only by session-driven paths, which start after this
	h.peers = cluster.Broadcast
	h.ready.Store(true)
	keys, err := federation.NewKeys(cluster, opts.KeyFile)
	if err != nil {
		_ = cluster.Close()
		h.close()
		return nil, err
	}
	srv.keys = keys
	bgCtx, cancel := context.WithCancel(context.Background())
	srv.bg, srv.bgDone = cancel, make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(2)
	go func() {
		defer bg.Done()
		keys.Ensure(bgCtx, opts.Logger)
	}()
	go func() {
		defer bg.Done()
		srv.watchQuorum(bgCtx, quorumLossGrace(copts.ElectionTimeout), time.Second)
	}()
	go func() {
		bg.Wait()
		close(srv.bgDone)
	}()
	srv.writes = newWritePool(0)
	srv.hub = h
	srv.origins = allowedOrigins(opts)
	srv.upgr = websocket.Upgrader{
		ReadBufferSize: 1024, WriteBufferSize: 1024, WriteBufferPool: &sync.Pool{},
		HandshakeTimeout: 10 * time.Second,
		CheckOrigin:      srv.checkOrigin,
		Error:            upgradeError,
	}
	srv.http = newHTTPServer(srv.routes(), opts.Logger)
	return srv, nil
}

// RemoteRooms joins rooms of other orgs and changes their state through their home org (federation).
type RemoteRooms interface {
	Join(ctx context.Context, userID, room string) (string, error)
	SendTyping(roomID, user string, typing bool, timeout time.Duration)
	SendReceipt(roomID, user, eventID string)
	// SendState has the home org authorize and commit a local user's state change in its
	// room, then commits the accepted event here (see remote_state.go).
	SendState(ctx context.Context, e *event.Event) error
}

// SetRemoteTyping shows a typing signal that arrived from another org.
func (srv *Server) SetRemoteTyping(room, user string, typing bool, timeout time.Duration) {
	srv.hub.setLocalTyping(room, user, typing, timeout)
}

// SetRemoteRooms enables joining rooms of other orgs; call before Serve.
func (srv *Server) SetRemoteRooms(r RemoteRooms) { srv.remote = r }

// Keys is the org's signing key source.
func (srv *Server) Keys() *federation.Keys { return srv.keys }

// Cluster is the node's Raft member.
func (srv *Server) Cluster() *consensus.Cluster { return srv.cluster }

// Serve serves HTTP on ln until Shutdown.
func (srv *Server) Serve(ln net.Listener) error {
	err := srv.http.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("node: serve http: %w", err)
}

// ServeTLS serves HTTPS (and wss://) only on ln until Shutdown, with certificates from r.
func (srv *Server) ServeTLS(ln net.Listener, r *CertReloader) error {
	srv.http.TLSConfig = ServerTLSConfig(r)
	err := srv.http.ServeTLS(ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("node: serve https: %w", err)
}

// Shutdown stops accepting, closes WebSockets with 1001, lets in-flight commits finish, and
// stops Raft.
func (srv *Server) Shutdown(ctx context.Context) error {
	srv.connMu.Lock()
	srv.shutting = true
	srv.connMu.Unlock()
	httpErr := srv.http.Shutdown(ctx)
	srv.bg()
	<-srv.bgDone
	srv.closeConns(websocket.CloseGoingAway, "server shutting down")
	done := make(chan struct{})
	go func() { srv.connWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	clusterErr := srv.cluster.Close()
	srv.hub.close()
	srv.writes.close()
	return errors.Join(httpErr, clusterErr)
}

func (srv *Server) closeConns(code int, reason string) {
	srv.connMu.Lock()
	all := make([]*session, 0, len(srv.conns))
	for s := range srv.conns {
		all = append(all, s)
	}
	srv.connMu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.closeWith(code, reason)
		}()
	}
	wg.Wait()
}

// allowWrite applies the per-user write rate; when refused it says how long to wait.
func (srv *Server) allowWrite(user string) (time.Duration, bool) {
	return srv.sendLimit.allow(user)
}

// userByToken resolves an access token; unavailable reports that the answer is unknown. A token this node does not know yet may have been
// issued by another node moments ago (or before a failover this node is still catching up
// on), so a miss waits, bounded, for this node to apply what is committed and looks again.
func (srv *Server) userByToken(token string) (string, bool, bool) {
	if token == "" {
		return "", false, false
	}
	hash := hashToken(token)
	if !srv.waitStartUp() {
		return "", false, true
	}
	if user, ok := srv.cluster.Store().UserByToken(hash); ok && srv.cluster.Healthy() {
		// In contact with the leader, this node applies a logout milliseconds after its
		// commit. A node cut off from it may not have heard of one: it checks with the leader
		// first, below, and without one it answers M_UNAVAILABLE.
		return user, true, false
	}
	if !srv.catchUp() {
		// Without a quorum this node cannot tell a new token from a bad one: say so, rather
		// than make the client throw away a token that may be valid.
		return "", false, true
	}
	user, ok := srv.cluster.Store().UserByToken(hash)
	return user, ok, false
}

// settleMiss is for a read that found nothing: it waits (bounded) until this node has applied
// all the leader had committed (after a restart, the one catch-up every request shares first),
// so that the read can be made again; false when it could not get there.
func (srv *Server) settleMiss() bool {
	return srv.waitStartUp() && srv.catchUp()
}

// waitStartUp waits (bounded) for the catch-up after this node's start when it is in it: the
// state is the snapshot's until the log is applied, and every request waits for that one
// catch-up (a restarted node's clients all come back at once) rather than asking the leader
// for a read index each. False when it did not end in time.
func (srv *Server) waitStartUp() bool {
	if !srv.cluster.CatchingUp() {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.cluster.WaitStartedUp(ctx) == nil
}

// catchUp waits (bounded) until this node has applied all the leader had committed; it
// reports whether it got there.
//
// Concurrent callers share read indexes (catchUps). Each read index is a Raft barrier, an
// entry in every node's log, and from a follower a forwarded call on a connection of its own
// while others are in flight: one per request, a flood of made-up tokens wrote an entry per
// request and opened a forwarding connection per request in flight.
func (srv *Server) catchUp() bool {
	ctx, cancel := context.WithTimeout(context.Background(), catchUpTimeout)
	defer cancel()
	return srv.catchUps.wait(ctx, srv.cluster.CaughtUp) == nil
}

const catchUpTimeout = 5 * time.Second

// catchUps runs one catch-up (a read index and the wait to apply it) at a time for all its
// callers. A caller never takes the answer of a round that began before it came, which may
// have read the leader's commit index before what the caller looks for was committed: it
// waits for the next round, which starts when the current one ends, for everyone who came
// meanwhile.
type catchUps struct {
	mu      sync.Mutex
	running bool
	next    *catchUpRound // the round that starts when the running one ends; nil: none yet
}

type catchUpRound struct {
	done chan struct{}
	err  error
}

// wait joins the next round (starting it when none runs) and returns its outcome, or ctx's
// error when ctx ends first.
func (c *catchUps) wait(ctx context.Context, run func(context.Context) error) error {
	c.mu.Lock()
	r := c.next
	if r == nil {
		r = &catchUpRound{done: make(chan struct{})}
		c.next = r
		if !c.running {
			c.startLocked(run)
		}
	}
	c.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startLocked runs the next round on a goroutine of its own, then the one after it if anyone
// came meanwhile; c.mu is held. A round is bounded by catchUpTimeout and ends at once when the
// cluster closes, so the goroutine does not outlive the node.
func (c *catchUps) startLocked(run func(context.Context) error) {
	r := c.next
	c.next, c.running = nil, true
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), catchUpTimeout)
		r.err = run(ctx)
		cancel()
		close(r.done)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.running = false
		if c.next != nil {
			c.startLocked(run)
		}
	}()
}

func (srv *Server) presenceOf(user string) string {
	if srv.hub.online(user) || srv.hub.orgs.online(user) { // orgs: users of other orgs
		return "online"
	}
	return "offline"
}

// waitStreamPos waits (bounded) until this node has applied the stream up to pos.
func (srv *Server) waitStreamPos(pos int64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for srv.cluster.Store().StreamPos() < pos {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// slowHash runs fn (a bcrypt hash or compare) in one of the bounded hashing slots.
func (srv *Server) slowHash(ctx context.Context, fn func()) error {
	select {
	case srv.hashSlots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-srv.hashSlots }()
	fn()
	return nil
}

// ObserveRelay records the lag of a confirmed federation transaction to peer.
func (srv *Server) ObserveRelay(peer string, lag time.Duration) {
	srv.metrics.relayLag.WithLabelValues(peer).Observe(lag.Seconds())
}

// SetRelayBacklog records how many stream events the outbox has yet to relay to peer.
func (srv *Server) SetRelayBacklog(peer string, events int64) {
	srv.metrics.relayBacklog.WithLabelValues(peer).Set(float64(events))
}

// CountBridgePublished counts events published to the bridges' events exchange.
func (srv *Server) CountBridgePublished(events int) {
	srv.metrics.bridgePublished.Add(float64(events))
}

// SetBridgeBacklog records how many stream events are yet to be published to bridges.
func (srv *Server) SetBridgeBacklog(events int64) {
	srv.metrics.bridgeBacklog.Set(float64(events))
}

// CountDeadLetter counts a message dead-lettered by source ("federation", "bridge").
func (srv *Server) CountDeadLetter(source, code string) {
	srv.metrics.deadLetters.WithLabelValues(source, code).Inc()
}

// CountReconnect counts an AMQP (re)connection of a component.
func (srv *Server) CountReconnect(component string) {
	srv.metrics.amqpReconnects.WithLabelValues(component).Inc()
}
