package consensus

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Stream kinds multiplexed on the cluster listener.
const (
	// streamRaft is the Raft stream. A Raft connection opens with streamRaftTo, not this:
	// builds before 2026-12-07 sent this kind and named no node, and are refused.
	streamRaft    byte = 'R'
	streamForward byte = 'F'
	// streamRaftTo is a Raft connection naming the node it is meant for: its proof is followed
	// by the length of that node's id (one byte, 1 to 255) and the id. The accepting node hands
	// it to its Raft stream only if that is its own id (raftTargetTransport).
	streamRaftTo byte = 'T'
)

const handshakeTimeout = 5 * time.Second

// misdirectedLogEvery spaces the log lines of refused misdirected Raft connections: the leader
// dials again at every failed heartbeat, a candidate at every election.
const misdirectedLogEvery = 30 * time.Second

// mux shares one cluster listener between Raft and leader forwarding. Every connection opens
// with a kind byte and a proof of the cluster secret; a peer without it is refused before any
// Raft or forwarding code sees a byte from it. A Raft connection then names the node it is
// meant for, and only that node takes it. A node without a secret is a cluster of one,
// which takes no cluster connections: it refuses them all, since the proof of an empty secret
// is one anybody can make.
type mux struct {
	ln        net.Listener
	advertise net.Addr // what peers dial; the listen address unless configured otherwise
	nodeID    string   // the id a Raft connection must name (streamRaftTo)
	alone     bool     // no secret: every inbound connection is refused
	proof     [32]byte
	tlsServer *tls.Config // nil: plain TCP
	tlsClient *tls.Config
	log       *slog.Logger

	mu      sync.Mutex
	conns   map[*trackedConn]struct{} // accepted and dialed, closed with the mux
	streams map[byte]*muxStream
	closed  chan struct{}
	wg      sync.WaitGroup

	misdirected refusals // Raft connections refused for naming another node
	untagged    refusals // Raft connections refused for naming no node (older builds)
}

// refusals counts refused connections of one kind and spaces the log lines about them (one
// per misdirectedLogEvery): the peer dials again at every heartbeat or election.
type refusals struct {
	n      atomic.Int64
	logged atomic.Int64 // n at the last log line
	at     atomic.Int64 // when that line was written (Unix ns)
}

// Load is the number of refusals so far.
func (r *refusals) Load() int64 { return r.n.Load() }

// add counts a refusal and reports whether to log it now, with the refusals since the last line
// (this one included).
func (r *refusals) add() (sinceLastLine int64, logNow bool) {
	n := r.n.Add(1)
	now := time.Now().UnixNano()
	if last := r.at.Load(); now-last >= int64(misdirectedLogEvery) && r.at.CompareAndSwap(last, now) {
		return n - r.logged.Swap(n), true
	}
	return 0, false
}

func secretProof(secret string) [32]byte {
	return sha256.Sum256([]byte("parley-cluster-v1\x00" + secret))
}

func newMux(ln net.Listener, nodeID, secret string, tlsServer, tlsClient *tls.Config, log *slog.Logger) *mux {
	m := &mux{ln: ln, advertise: ln.Addr(), nodeID: nodeID, alone: secret == "", proof: secretProof(secret), tlsServer: tlsServer, tlsClient: tlsClient, log: log,
		streams: make(map[byte]*muxStream), closed: make(chan struct{}), conns: make(map[*trackedConn]struct{})}
	for _, k := range []byte{streamRaft, streamForward} {
		m.streams[k] = &muxStream{m: m, kind: k, conns: make(chan net.Conn, 16)}
	}
	m.wg.Add(1)
	go m.serve()
	return m
}

func (m *mux) serve() {
	defer m.wg.Done()
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			m.log.Error("cluster listener failed", "err", err)
			return
		}
		// Tracked from the start, so that closing the mux ends a handshake still under way
		// instead of waiting up to handshakeTimeout for it.
		tc := m.track(conn)
		if tc == nil {
			return
		}
		// Handshakes have no concurrency cap: each is bounded by handshakeTimeout, and a cap
		// would let anyone who can reach the port hold every slot with connections that send
		// nothing, re-opened every few seconds, and so lock the real peers out (no heartbeats,
		// no votes). Such a flood is network-level denial of service (docs/security.md).
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.handshake(tc)
		}()
	}
}

// handshake checks the kind byte and the proof of the secret on conn (which the mux tracks
// already) and hands conn to its stream, or closes it.
func (m *mux) handshake(conn net.Conn) {
	if m.alone {
		m.log.Warn("cluster peer refused: this node has no cluster.secret, so it takes no cluster connections", "remote", conn.RemoteAddr().String())
		conn.Close()
		return
	}
	if m.tlsServer != nil {
		conn = tls.Server(conn, m.tlsServer) // closing it closes the tracked conn under it
	}
	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	var hdr [33]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		m.log.Warn("cluster peer refused: no handshake", "remote", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return
	}
	if subtle.ConstantTimeCompare(hdr[1:], m.proof[:]) != 1 {
		m.log.Warn("cluster peer refused: wrong cluster secret", "remote", conn.RemoteAddr().String())
		conn.Close()
		return
	}
	kind := hdr[0]
	switch kind {
	case streamRaft:
		// Every connection Raft opens names its server (raftTargetTransport); one that names
		// none comes from an older build, which dials a member by address alone, at every
		// heartbeat: logged as the misdirected ones are, once per misdirectedLogEvery.
		if refused, logNow := m.untagged.add(); logNow {
			m.log.Warn("cluster peer refused: a Raft connection that names no node (a build from before 2026-12-07?)",
				"remote", conn.RemoteAddr().String(), "refused_since_last_line", refused)
		}
		conn.Close()
		return
	case streamRaftTo:
		if !m.meantForThisNode(conn) {
			conn.Close()
			return
		}
		kind = streamRaft
	}
	st, ok := m.streams[kind]
	if !ok {
		m.log.Warn("cluster peer refused: unknown stream", "remote", conn.RemoteAddr().String())
		conn.Close()
		return
	}
	_ = conn.SetDeadline(time.Time{})
	select {
	case st.conns <- conn:
	case <-m.closed:
		conn.Close()
	}
}

// meantForThisNode reads the id a streamRaftTo connection names, after its proof, and
// reports whether it is this node's. Raft dials a member by address, so another node running
// at a member's address would otherwise take that member's appends and votes and answer them
// as the member: its vote would count as the member's.
func (m *mux) meantForThisNode(conn net.Conn) bool {
	var n [1]byte
	if _, err := io.ReadFull(conn, n[:]); err != nil || n[0] == 0 {
		m.log.Warn("cluster peer refused: no node id in a Raft handshake", "remote", conn.RemoteAddr().String(), "err", err)
		return false
	}
	id := make([]byte, n[0])
	if _, err := io.ReadFull(conn, id); err != nil {
		m.log.Warn("cluster peer refused: no node id in a Raft handshake", "remote", conn.RemoteAddr().String(), "err", err)
		return false
	}
	if string(id) == m.nodeID {
		return true
	}
	if refused, logNow := m.misdirected.add(); logNow {
		m.log.Warn("cluster peer refused: Raft traffic meant for another node (this node runs at that member's address)",
			"node_id", m.nodeID, "meant_for", string(id), "remote", conn.RemoteAddr().String(),
			"refused_since_last_line", refused)
	}
	return false
}

func (m *mux) dial(kind byte, addr string, timeout time.Duration) (net.Conn, error) {
	return m.dialWith(append([]byte{kind}, m.proof[:]...), addr, timeout)
}

// dialWith dials addr and sends hdr, the handshake.
func (m *mux) dialWith(hdr []byte, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if m.tlsClient != nil {
		cfg := m.tlsClient.Clone()
		if host, _, err := net.SplitHostPort(addr); err == nil && cfg.ServerName == "" {
			cfg.ServerName = host // the peer's certificate must name the address we dial
		}
		conn = tls.Client(conn, cfg)
	}
	// Both ways: with TLS the first write runs the handshake, which reads the peer's answer; a
	// peer that accepts and never answers (a paused process) held the dial for good.
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(hdr); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	tc := m.track(conn)
	if tc == nil {
		return nil, net.ErrClosed
	}
	return tc, nil
}

// trackedConn removes itself from the mux when closed, so the mux can close what is left.
type trackedConn struct {
	net.Conn
	m    *mux
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.m.mu.Lock()
		delete(c.m.conns, c)
		c.m.mu.Unlock()
	})
	return c.Conn.Close()
}

func (m *mux) track(conn net.Conn) *trackedConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.closed:
		conn.Close()
		return nil
	default:
	}
	tc := &trackedConn{Conn: conn, m: m}
	m.conns[tc] = struct{}{}
	return tc
}

func (m *mux) close() {
	m.mu.Lock()
	select {
	case <-m.closed:
		m.mu.Unlock()
		return
	default:
		close(m.closed)
	}
	m.mu.Unlock()
	m.ln.Close()
	m.mu.Lock()
	open := make([]*trackedConn, 0, len(m.conns))
	for c := range m.conns {
		open = append(open, c)
	}
	m.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
	m.wg.Wait()
	for _, st := range m.streams {
	drain:
		for {
			select {
			case c := <-st.conns:
				c.Close()
			default:
				break drain
			}
		}
	}
}

// muxStream is one kind of stream on the mux; it is a raft.StreamLayer.
type muxStream struct {
	m     *mux
	kind  byte
	conns chan net.Conn
}

var _ raft.StreamLayer = (*muxStream)(nil)

func (s *muxStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.m.closed:
		return nil, net.ErrClosed
	}
}

func (s *muxStream) Close() error   { return nil } // the mux owns the listener
func (s *muxStream) Addr() net.Addr { return s.m.advertise }

// Dial dials addr. On the Raft stream, addr carries the id of the node it is meant for
// (raftTargetTransport), which the connection names (streamRaftTo).
func (s *muxStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if s.kind != streamRaft {
		return s.m.dial(s.kind, string(addr), timeout)
	}
	id, plain := splitRaftTarget(addr)
	if id == "" || len(id) > 255 {
		return nil, fmt.Errorf("dial %s: a Raft connection must name the node it is meant for (an id of 1 to 255 bytes), not %q", plain, id)
	}
	hdr := append(append([]byte{streamRaftTo}, s.m.proof[:]...), byte(len(id)))
	return s.m.dialWith(append(hdr, id...), plain, timeout)
}
