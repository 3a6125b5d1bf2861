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
	"time"

	"github.com/hashicorp/raft"
)

// Stream kinds multiplexed on the cluster listener.
const (
	streamRaft    byte = 'R'
	streamForward byte = 'F'
)

const handshakeTimeout = 5 * time.Second

// mux shares one cluster listener between Raft and leader forwarding. Every connection opens
// with a kind byte and a proof of the cluster secret; a peer without it is refused before any
// Raft or forwarding code sees a byte from it. A node without a secret is a cluster of one,
// which takes no cluster connections: it refuses them all, since the proof of an empty secret
// is one anybody can make.
type mux struct {
	ln        net.Listener
	advertise net.Addr // what peers dial; the listen address unless configured otherwise
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
}

func secretProof(secret string) [32]byte {
	return sha256.Sum256([]byte("parley-cluster-v1\x00" + secret))
}

func newMux(ln net.Listener, secret string, tlsServer, tlsClient *tls.Config, log *slog.Logger) *mux {
	m := &mux{ln: ln, advertise: ln.Addr(), alone: secret == "", proof: secretProof(secret), tlsServer: tlsServer, tlsClient: tlsClient, log: log,
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
	st, ok := m.streams[hdr[0]]
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

func (m *mux) dial(kind byte, addr string, timeout time.Duration) (net.Conn, error) {
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
	hdr := append([]byte{kind}, m.proof[:]...)
	_ = conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(hdr); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake %s: %w", addr, err)
	}
	_ = conn.SetWriteDeadline(time.Time{})
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

func (s *muxStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return s.m.dial(s.kind, string(addr), timeout)
}
