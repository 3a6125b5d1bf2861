package node

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parley-chat/parley/consensus"
	"golang.org/x/crypto/bcrypt"
)

// Resource churn: connections that come and go in every way a client can end one leave
// nothing behind on the node (goroutines, sockets, per-key map entries).

// openFDs counts this process's open file descriptors (-1 where /proc is missing).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// settles polls cond until it holds or limit passes; it reports the last description.
func settles(limit time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(limit)
	for {
		ok, what := cond()
		if ok || time.Now().After(deadline) {
			return ok, what
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nodeLeftovers describes what the node still holds for connections; "" when nothing.
func nodeLeftovers(srv *Server) string {
	srv.connMu.Lock()
	conns := len(srv.conns)
	srv.connMu.Unlock()
	srv.hub.mu.RLock()
	sessions := len(srv.hub.sessions)
	srv.hub.mu.RUnlock()
	count := func(c *counter) int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.n) }
	ip, user, unauth := count(srv.connsIP), count(srv.connsUser), count(srv.unauthenticated)
	if conns+sessions+ip+user+unauth == 0 {
		return ""
	}
	return fmt.Sprintf("conns=%d hub users=%d connsIP keys=%d connsUser keys=%d unauthenticated keys=%d",
		conns, sessions, ip, user, unauth)
}

// rawUpgrade opens a WebSocket by hand and returns the bare TCP connection after the 101,
// so the test can end it in ways gorilla's client would not (mid-frame, without a close).
func rawUpgrade(t *testing.T, addr, query string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /v1/ws%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", query, addr)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		t.Fatalf("upgrade: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		t.Fatalf("upgrade: %s", resp.Status)
	}
	return conn, br
}

// maskedText is a client's (masked, zero key) text frame of payload; cut drops bytes off its end.
func maskedText(payload string, cut int) []byte {
	n := len(payload)
	var f []byte
	if n < 126 {
		f = []byte{0x81, 0x80 | byte(n)}
	} else {
		f = []byte{0x81, 0x80 | 126, byte(n >> 8), byte(n)}
	}
	f = append(f, 0, 0, 0, 0) // a zero mask leaves the payload as it is
	f = append(f, payload...)
	return f[:len(f)-cut]
}

// TestConnectionChurnLeavesNothingBehind opens and ends hundreds of WebSockets in every way a
// client may (clean close, dropped TCP before or after auth, a frame cut off, a bad token, a
// client that stops reading and answering) and checks that the node's goroutines, sockets
// and per-connection bookkeeping return to where they were.
func TestConnectionChurnLeavesNothingBehind(t *testing.T) {
	const (
		ping = 100 * time.Millisecond
		pong = 600 * time.Millisecond // silent clients are dropped after this
	)
	n := startNode(t, func(o *Options) {
		o.PingInterval, o.PongTimeout = ping, pong
		o.Limits.ConnsPerUser = 1000
	})
	_, tok := n.register("")
	talker := n.dial(tok) // keeps the room busy: pushes reach the churning sessions
	room := talker.createRoom(map[string]any{"name": "busy", "visibility": "public", "alias": "busy"})

	// Warm up: the write pool, HTTP keep-alives and the hub's first sessions exist before
	// the baseline is taken.
	warm := n.dial(tok)
	warm.ok(map[string]any{"op": "join", "room": room})
	warm.close()
	if ok, what := settles(5*time.Second, func() (bool, string) { return n.srv.hub.sessionCount(talker.user) == 1, "" }); !ok {
		t.Fatal("warm-up session never left the hub", what)
	}
	http.DefaultClient.CloseIdleConnections()
	runtime.GC()
	baseG, baseFD := runtime.NumGoroutine(), openFDs()

	var (
		halfMu   sync.Mutex
		halfOpen []net.Conn
	)
	authFrame := fmt.Sprintf(`{"op":"auth","id":"a","token":%q}`, tok)
	kinds := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"auth then close frame", func(t *testing.T) {
			c := n.dial(tok)
			c.ok(map[string]any{"op": "join", "room": room})
			_ = c.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
			c.close()
		}},
		{"auth then TCP dropped", func(t *testing.T) {
			conn, br := rawUpgrade(t, n.addr, "")
			conn.Write(maskedText(authFrame, 0))
			br.ReadByte() // the ok has started to arrive
			conn.Close()
		}},
		{"token in URL, TCP dropped", func(t *testing.T) {
			conn, _ := rawUpgrade(t, n.addr, "?access_token="+tok)
			conn.Close()
		}},
		{"no auth, TCP dropped", func(t *testing.T) {
			conn, _ := rawUpgrade(t, n.addr, "")
			conn.Close()
		}},
		{"auth frame cut off", func(t *testing.T) {
			conn, _ := rawUpgrade(t, n.addr, "")
			conn.Write(maskedText(authFrame, 7))
			conn.Close()
		}},
		{"request cut off after auth", func(t *testing.T) {
			conn, br := rawUpgrade(t, n.addr, "")
			conn.Write(maskedText(authFrame, 0))
			br.ReadByte()
			conn.Write(maskedText(fmt.Sprintf(`{"op":"send","id":"s","room_id":%q,"txn_id":"x","content":{"body":"hi"}}`, room), 5))
			conn.Close()
		}},
		{"bad token", func(t *testing.T) {
			conn, br := rawUpgrade(t, n.addr, "")
			conn.Write(maskedText(`{"op":"auth","id":"a","token":"nope"}`, 0))
			br.ReadByte()
			conn.Close()
		}},
		{"half-open: never reads, never answers", func(t *testing.T) {
			conn, _ := rawUpgrade(t, n.addr, "")
			conn.Write(maskedText(authFrame, 0))
			conn.Write(maskedText(fmt.Sprintf(`{"op":"join","id":"j","room":%q}`, room), 0))
			// Left open: the node must drop it by itself (pong timeout).
			halfMu.Lock()
			halfOpen = append(halfOpen, conn)
			halfMu.Unlock()
		}},
	}
	const rounds = 40
	var wg sync.WaitGroup
	sent := make(chan struct{})
	go func() { // pushes to every churning member while they come and go
		defer close(sent)
		for i := 0; i < 100; i++ {
			talker.pipeline(map[string]any{"op": "send", "room_id": room, "txn_id": fmt.Sprintf("c%d", i),
				"content": map[string]any{"msgtype": "m.text", "body": "churn"}})
			time.Sleep(5 * time.Millisecond)
		}
	}()
	for _, k := range kinds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				k.run(t)
			}
		}()
	}
	wg.Wait()
	<-sent

	talker.close()
	ok, what := settles(10*time.Second, func() (bool, string) {
		left := nodeLeftovers(n.srv)
		return left == "", left
	})
	if !ok {
		t.Fatalf("node state left behind: %s", what)
	}
	for _, c := range halfOpen { // the node has let go of them: only the test's ends are left
		c.Close()
	}
	ok, what = settles(10*time.Second, func() (bool, string) {
		g, fd := runtime.NumGoroutine(), openFDs()
		return g <= baseG+2 && fd <= baseFD+2, fmt.Sprintf("goroutines %d (baseline %d), fds %d (baseline %d)", g, baseG, fd, baseFD)
	})
	if !ok {
		buf := make([]byte, 1<<20)
		t.Logf("%s", buf[:runtime.Stack(buf, true)])
		t.Fatalf("after churn: %s", what)
	}
}

// TestWriteBucketsOfGoneUsersAreForgotten: the per-user write buckets (and the connect
// buckets beside them) of users who connected, wrote and left are swept once refilled,
// instead of one per user who ever connected being kept for the node's lifetime.
func TestWriteBucketsOfGoneUsersAreForgotten(t *testing.T) {
	n := startNode(t, func(o *Options) {
		o.SendPerSecond, o.SendBurst = 1000, 10 // a bucket refills in 10 ms
		o.Limits.RegisterPerHour = 1000
	})
	const users = 40
	for range users {
		_, tok := n.register("")
		c := n.dial(tok)
		c.fails("M_NOT_FOUND", map[string]any{"op": "read", "room_id": "!nowhere:test.local", "event_id": "$x"})
		c.close()
	}
	buckets := func() int {
		n.srv.sendLimit.mu.Lock()
		defer n.srv.sendLimit.mu.Unlock()
		return len(n.srv.sendLimit.buckets)
	}
	if got := buckets(); got < users {
		t.Fatalf("%d write buckets after %d users wrote: the test does not reach them", got, users)
	}
	time.Sleep(50 * time.Millisecond) // every bucket is full again
	n.srv.sendLimit.mu.Lock()
	n.srv.sendLimit.sweep = time.Time{} // the sweep is due (it runs at most once a minute)
	n.srv.sendLimit.mu.Unlock()
	_, tok := n.register("")
	n.dial(tok).close()
	if got := buckets(); got > 1 {
		t.Fatalf("%d write buckets kept for %d users gone idle, want at most the newcomer's", got, users)
	}
}

// TestShutdownEndsAWebSocketUpgradedMeanwhile: a WebSocket whose upgrade was under way while
// the node shut down is closed at once. net/http's Shutdown stops tracking a connection once
// its handler hijacks it, so such a session could register after Shutdown closed the
// sessions, and outlive the node (its reader, its socket) on a stopped cluster.
func TestShutdownEndsAWebSocketUpgradedMeanwhile(t *testing.T) {
	n := &testNode{t: t, dataDir: t.TempDir(), raft: freeAddr(t)}
	n.opts = Options{Org: "test.local", PasswordCost: bcrypt.MinCost}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = ln.Addr().String()
	opts := n.opts
	opts.PublicURL, opts.Listen, opts.Logger = "http://"+n.addr, n.addr, testLogger(t)
	srv, err := New(opts, consensus.Options{NodeID: "node1", RaftBind: n.raft, Bootstrap: true, DataDir: n.dataDir,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// The upgrade is held just after the hijack, where net/http no longer waits for it.
	hijacked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv.http.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateHijacked {
			once.Do(func() { close(hijacked); <-release })
		}
	}
	n.srv, n.done = srv, make(chan error, 1)
	go func() { n.done <- srv.Serve(ln) }()
	n.ready()

	conn, err := net.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", n.addr)
	<-hijacked
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	<-n.done
	close(release)

	// The client, which sends no auth frame, must not be kept for the 10 s it may take.
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Fatalf("the connection upgraded during shutdown was not closed: %v", err)
	}
	ok, what := settles(3*time.Second, func() (bool, string) {
		left := nodeLeftovers(srv)
		return left == "", left
	})
	if !ok {
		t.Fatalf("after shutdown the node still holds: %s", what)
	}
}

// lastLogIndex is the leader's last Raft log index, as its status reports it.
func lastLogIndex(t *testing.T, srv *Server) uint64 {
	t.Helper()
	st, err := srv.cluster.Status()
	if err != nil {
		t.Fatal(err)
	}
	var i uint64
	if _, err := fmt.Sscan(st.LastIndex, &i); err != nil {
		t.Fatalf("last_log_index %q: %v", st.LastIndex, err)
	}
	return i
}

// TestUnknownTokensShareReadIndexes: every request with a token the node does not know waits
// for a read index (the token may be seconds old, made on another node). Taken one per
// request, a flood of made-up tokens sent to a follower opened a forwarding connection to the
// leader per request in flight and wrote a Raft barrier entry per request to every node's log.
// Concurrent requests share read indexes instead: one in flight per node, the next one for
// all who came meanwhile.
func TestUnknownTokensShareReadIndexes(t *testing.T) {
	nodes := startCluster(t, nil)
	var leader, follower *testNode
	for _, n := range nodes {
		if n.srv.cluster.IsLeader() {
			leader = n
		} else if follower == nil {
			follower = n
		}
	}
	if leader == nil {
		t.Fatal("no leader")
	}
	_, tok := follower.register("") // a real token still works during the flood
	before := lastLogIndex(t, leader.srv)

	const workers, each = 50, 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				req, _ := http.NewRequest(http.MethodPost, follower.url("/v1/logout"), nil)
				req.Header.Set("Authorization", fmt.Sprintf("Bearer made-up-%d-%d", w, i))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Errorf("logout with a made-up token: %d", resp.StatusCode)
				}
			}
		}()
	}
	c := follower.dial(tok)
	c.ok(map[string]any{"op": "ping"})
	wg.Wait()
	c.close()

	grew := lastLogIndex(t, leader.srv) - before
	if grew > workers*each/4 {
		t.Fatalf("%d requests with unknown tokens wrote %d entries to the Raft log", workers*each, grew)
	}
	t.Logf("%d requests with unknown tokens: %d log entries", workers*each, grew)
}
