package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/loopback"
	"github.com/parley-chat/parley/consensus/state"
	"golang.org/x/crypto/bcrypt"
)

// testNode is a real node on loopback TCP with its data in a temp dir.
type testNode struct {
	t       *testing.T
	srv     *Server
	addr    string
	dataDir string
	raft    string
	opts    Options
	// copts, when it names a node, are its consensus options (a member of startCluster's
	// cluster); otherwise the node bootstraps a cluster of its own.
	copts consensus.Options
	done  chan error
}

func freeAddr(t *testing.T) string { return loopback.FreeAddr(t) }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startNode starts a single-node org "test.local". mutate may adjust the options.
func startNode(t *testing.T, mutate func(*Options)) *testNode {
	t.Helper()
	n := &testNode{t: t, dataDir: t.TempDir()}
	n.raft = freeAddr(t)
	n.opts = Options{Org: "test.local", RegistrationOpen: true, PasswordCost: bcrypt.MinCost,
		SendPerSecond: 1000, SendBurst: 1000}
	if mutate != nil {
		mutate(&n.opts)
	}
	// Registered first: a start that fails once New has succeeded (no leader, no key) must
	// still stop the node it started.
	t.Cleanup(n.stop)
	n.start()
	return n
}

func (n *testNode) start() {
	n.t.Helper()
	n.launch()
	n.ready()
}

// launch opens the node and serves it, without waiting for its cluster.
func (n *testNode) launch() {
	t := n.t
	t.Helper()
	ln, err := net.Listen("tcp", orDefault(n.addr, "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	n.addr = ln.Addr().String()
	opts := n.opts
	if opts.PublicURL == "" {
		opts.PublicURL = "http://" + n.addr
	}
	if opts.Listen == "" {
		opts.Listen = n.addr
	}
	opts.Logger = testLogger(t)
	copts := n.copts
	if copts.NodeID == "" {
		copts = consensus.Options{NodeID: "node1", RaftBind: n.raft, Bootstrap: true,
			HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond}
	}
	copts.DataDir = n.dataDir
	srv, err := New(opts, copts)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	n.srv = srv
	n.done = make(chan error, 1)
	go func() { n.done <- srv.Serve(ln) }()
}

// ready waits until the node is in contact with its cluster's leader, has applied what that
// leader committed, and holds the org's signing key.
func (n *testNode) ready() {
	t := n.t
	t.Helper()
	srv := n.srv
	deadline := time.Now().Add(10 * time.Second)
	for !srv.cluster.Healthy() {
		if time.Now().After(deadline) {
			t.Fatal("node found no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.cluster.CaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ok := srv.keys.Current(); !ok; _, ok = srv.keys.Current() {
		if time.Now().After(deadline) {
			t.Fatal("no org signing key")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startCluster starts three nodes of one org on loopback TCP as one Raft cluster; observe, when
// not nil, is each node's consensus observer (called before the node's own).
func startCluster(t *testing.T, observe func(i int) func(*state.Applied)) []*testNode {
	t.Helper()
	nodes := make([]*testNode, 3)
	var peers []consensus.Peer
	for i := range nodes {
		n := &testNode{t: t, dataDir: t.TempDir(), raft: freeAddr(t)}
		n.opts = Options{Org: "test.local", RegistrationOpen: true, PasswordCost: bcrypt.MinCost,
			SendPerSecond: 1000, SendBurst: 1000}
		nodes[i] = n
		peers = append(peers, consensus.Peer{ID: fmt.Sprintf("node%d", i+1), RaftAddr: n.raft})
	}
	for i, n := range nodes {
		n.copts = consensus.Options{NodeID: peers[i].ID, RaftBind: n.raft, Bootstrap: true, Peers: peers,
			Secret: "cluster secret for the tests", HeartbeatTimeout: 100 * time.Millisecond,
			ElectionTimeout: 100 * time.Millisecond}
		if observe != nil {
			n.copts.Observer = observe(i)
		}
		t.Cleanup(n.stop)
		n.launch()
	}
	for _, n := range nodes {
		n.ready()
	}
	return nodes
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (n *testNode) stop() {
	if n.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.srv.Shutdown(ctx); err != nil {
		n.t.Errorf("shutdown: %v", err)
	}
	<-n.done
	n.srv = nil
}

func (n *testNode) restart() {
	n.stop()
	n.start()
}

func (n *testNode) url(path string) string { return "http://" + n.addr + path }

func (n *testNode) post(path string, body any, token string) (int, map[string]any) {
	n.t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, n.url(path), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

var userSeq atomic.Int64

// register makes a fresh user and returns its id and token.
func (n *testNode) register(name string) (string, string) {
	n.t.Helper()
	if name == "" {
		name = fmt.Sprintf("user%d", userSeq.Add(1))
	}
	code, out := n.post("/v1/register", map[string]string{"username": name, "password": "correct horse"}, "")
	if code != 200 {
		n.t.Fatalf("register %s: %d %v", name, code, out)
	}
	return out["user_id"].(string), out["access_token"].(string)
}

// client is a protocol client: it matches replies to requests by id and collects pushes.
type client struct {
	t      *testing.T
	conn   *websocket.Conn
	user   string
	seq    atomic.Int64
	mu     sync.Mutex
	wait   map[string]chan map[string]any
	pushes chan map[string]any
	closed chan struct{}
	// closeCode is the close code received, once closed.
	closeCode atomic.Int64
}

func (n *testNode) dial(token string) *client {
	n.t.Helper()
	c := n.dialRaw(nil)
	if token != "" {
		reply := c.request(map[string]any{"op": "auth", "token": token})
		if reply["op"] != "ok" {
			n.t.Fatalf("auth: %v", reply)
		}
		c.user, _ = reply["user_id"].(string)
	}
	return c
}

func (n *testNode) dialRaw(header http.Header) *client {
	n.t.Helper()
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws", header)
	if err != nil {
		n.t.Fatalf("dial: %v", err)
	}
	return newClient(n.t, conn)
}

func newClient(t *testing.T, conn *websocket.Conn) *client {
	c := &client{t: t, conn: conn, wait: map[string]chan map[string]any{},
		pushes: make(chan map[string]any, 100000), closed: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(c.close)
	return c
}

func (c *client) readLoop() {
	defer close(c.closed)
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if ok := asCloseError(err, &ce); ok {
				c.closeCode.Store(int64(ce.Code))
			}
			return
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			c.t.Errorf("bad frame from server: %s", data)
			continue
		}
		id, _ := m["id"].(string)
		if op := m["op"]; (op == "ok" || op == "error") && id != "" {
			c.mu.Lock()
			ch := c.wait[id]
			delete(c.wait, id)
			c.mu.Unlock()
			if ch != nil {
				ch <- m
				continue
			}
		}
		c.pushes <- m
	}
}

func asCloseError(err error, target **websocket.CloseError) bool {
	ce, ok := err.(*websocket.CloseError)
	if ok {
		*target = ce
	}
	return ok
}

func (c *client) close() { c.conn.Close(); <-c.closed }

// request sends a frame (adding an id) and waits for its reply.
func (c *client) request(frame map[string]any) map[string]any {
	c.t.Helper()
	ch := c.pipeline(frame)
	select {
	case m := <-ch:
		return m
	case <-c.closed:
		// The reader hands over a reply before it reads on and sees the close, but select
		// picks at random when both are ready by the time it runs: an error reply followed by
		// a close (a refused auth) must still be returned.
		select {
		case m := <-ch:
			return m
		default:
		}
		c.t.Fatalf("connection closed while waiting for %v", frame["op"])
	case <-time.After(15 * time.Second):
		c.t.Fatalf("no reply to %v", frame)
	}
	return nil
}

// pipeline writes a request without waiting for its answer, which the returned channel gets.
func (c *client) pipeline(frame map[string]any) chan map[string]any {
	c.t.Helper()
	id := fmt.Sprintf("r%d", c.seq.Add(1))
	frame["id"] = id
	ch := make(chan map[string]any, 1)
	c.mu.Lock()
	c.wait[id] = ch
	c.mu.Unlock()
	if err := c.conn.WriteJSON(frame); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	return ch
}

// ok sends a request and fails the test unless it succeeds.
func (c *client) ok(frame map[string]any) map[string]any {
	c.t.Helper()
	op := frame["op"]
	m := c.request(frame)
	if m["op"] != "ok" {
		c.t.Fatalf("%v: %v", op, m)
	}
	return m
}

// fails sends a request and checks the error code.
func (c *client) fails(code string, frame map[string]any) map[string]any {
	c.t.Helper()
	op := frame["op"]
	m := c.request(frame)
	if m["op"] != "error" || m["code"] != code {
		c.t.Fatalf("%v: want %s, got %v", op, code, m)
	}
	return m
}

// nextPush waits for the next push matching pred.
func (c *client) nextPush(pred func(map[string]any) bool) map[string]any {
	c.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-c.pushes:
			if pred == nil || pred(m) {
				return m
			}
		case <-timeout:
			c.t.Fatal("timed out waiting for a push")
			return nil
		}
	}
}

// nextEvent waits for the next pushed event of the given type in room ("" matches any).
func (c *client) nextEvent(room, typ string) map[string]any {
	c.t.Helper()
	m := c.nextPush(func(m map[string]any) bool {
		if m["op"] != "event" {
			return false
		}
		e := m["event"].(map[string]any)
		return (room == "" || e["room_id"] == room) && (typ == "" || e["type"] == typ)
	})
	return m["event"].(map[string]any)
}

func (c *client) send(room, txn, body string) string {
	c.t.Helper()
	m := c.ok(map[string]any{"op": "send", "room_id": room, "txn_id": txn,
		"content": map[string]any{"msgtype": "m.text", "body": body}})
	return m["event_id"].(string)
}

func (c *client) createRoom(params map[string]any) string {
	c.t.Helper()
	params["op"] = "create_room"
	return c.ok(params)["room_id"].(string)
}
