package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// fakeWorld is an in-memory stand-in for one or more Parley orgs, enough
// for the bench scenarios: register/login/health/metrics over HTTP, and
// auth, create_room, join (by id or alias, remote aliases only when
// federated), send (with optional rate limiting) and event pushes over
// WebSocket. Several fakeNodes of the same org form a "cluster" that shares
// the state; nodes of different orgs reach each other only when federated.
type fakeWorld struct {
	mu        sync.Mutex
	passwords map[string]string // user id -> password
	tokens    map[string]string // token -> user id
	rooms     map[string]map[string]bool
	aliases   map[string]string // #alias:org -> room id
	conns     map[*fakeConn]bool
	pos       int64
	nextID    int64
	sends     map[string]int // user -> sends, for limitEvery
	txns      map[string]string

	federated  bool
	limitEvery int // every limitEvery-th send of a user gets M_LIMIT_EXCEEDED
	dropEvery  int // every dropEvery-th push is not delivered
	// every dropEventEvery-th event is pushed to no one: unlike dropEvery, whose drop may fall
	// on a connection the tool does not watch, a watcher surely misses it
	dropEventEvery int
	dupEvery       int  // every dupEvery-th push is delivered twice
	forkEvery      int  // every forkEvery-th send also commits a second event (same body, another id), never acked
	noCPUMetric    bool // /metrics lacks process_cpu_seconds_total
	sendDelay      time.Duration
	pushes         int
	wg             sync.WaitGroup
}

type fakeNode struct {
	w      *fakeWorld
	org    string
	nodeID string
	srv    *httptest.Server
	open   atomic.Int64
	pushes int // events pushed to this node's connections; guarded by w.mu
}

type fakeConn struct {
	node *fakeNode
	ws   *websocket.Conn
	user string
	mu   sync.Mutex
	out  chan []byte
	shut bool
}

func newFakeWorld() *fakeWorld {
	return &fakeWorld{passwords: map[string]string{}, tokens: map[string]string{}, rooms: map[string]map[string]bool{},
		aliases: map[string]string{}, conns: map[*fakeConn]bool{}, sends: map[string]int{}, txns: map[string]string{}}
}

func (w *fakeWorld) node(t *testing.T, org, nodeID string) *fakeNode {
	n := &fakeNode{w: w, org: org, nodeID: nodeID}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/register", n.register)
	mux.HandleFunc("POST /v1/login", n.login)
	mux.HandleFunc("GET /v1/health", func(rw http.ResponseWriter, r *http.Request) {
		writeJSON(rw, 200, map[string]string{"status": "ok", "org": org, "node_id": nodeID, "role": "leader", "leader": nodeID})
	})
	mux.HandleFunc("GET /metrics", func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %g\n", float64(100_000_000+10_000*n.open.Load()))
		if !w.noCPUMetric {
			w.mu.Lock()
			cpu := 0.5 + float64(n.pushes)*0.001 // a millisecond per push, so a run's share is large enough to see
			w.mu.Unlock()
			fmt.Fprintf(rw, "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %g\n", cpu)
		}
	})
	mux.HandleFunc("GET /v1/ws", n.serveWS)
	n.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		n.srv.CloseClientConnections()
		n.srv.Close()
		w.wg.Wait()
	})
	return n
}

func (n *fakeNode) addr() string { return n.srv.Listener.Addr().String() }

func writeJSON(rw http.ResponseWriter, status int, v any) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(status)
	_ = json.NewEncoder(rw).Encode(v)
}

func (n *fakeNode) register(rw http.ResponseWriter, r *http.Request) {
	var b struct{ Username, Password string }
	if err := json.NewDecoder(r.Body).Decode(&b); err != nil || !validLocalpart(b.Username) {
		writeJSON(rw, 400, map[string]string{"code": "M_INVALID_USERNAME", "message": "bad username"})
		return
	}
	if len(b.Password) < 8 {
		writeJSON(rw, 400, map[string]string{"code": "M_WEAK_PASSWORD", "message": "short"})
		return
	}
	uid := "@" + b.Username + ":" + n.org
	n.w.mu.Lock()
	defer n.w.mu.Unlock()
	if _, ok := n.w.passwords[uid]; ok {
		writeJSON(rw, 409, map[string]string{"code": "M_USER_IN_USE", "message": "taken"})
		return
	}
	n.w.passwords[uid] = b.Password
	n.w.nextID++
	tok := fmt.Sprintf("tok%d", n.w.nextID)
	n.w.tokens[tok] = uid
	writeJSON(rw, 200, map[string]string{"user_id": uid, "access_token": tok})
}

func (n *fakeNode) login(rw http.ResponseWriter, r *http.Request) {
	var b struct{ Username, Password string }
	_ = json.NewDecoder(r.Body).Decode(&b)
	uid := "@" + b.Username + ":" + n.org
	n.w.mu.Lock()
	defer n.w.mu.Unlock()
	if pw, ok := n.w.passwords[uid]; !ok || pw != b.Password {
		writeJSON(rw, 403, map[string]string{"code": "M_FORBIDDEN", "message": "bad login"})
		return
	}
	n.w.nextID++
	tok := fmt.Sprintf("tok%d", n.w.nextID)
	n.w.tokens[tok] = uid
	writeJSON(rw, 200, map[string]string{"user_id": uid, "access_token": tok})
}

func orgOf(id string) string {
	if i := strings.IndexByte(id, ':'); i >= 0 {
		return id[i+1:]
	}
	return ""
}

func (n *fakeNode) serveWS(rw http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{}
	ws, err := up.Upgrade(rw, r, nil)
	if err != nil {
		return
	}
	n.w.wg.Add(1)
	defer n.w.wg.Done()
	n.open.Add(1)
	defer n.open.Add(-1)
	c := &fakeConn{node: n, ws: ws, out: make(chan []byte, 4096)}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for b := range c.out {
			_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
				ws.Close()
				for range c.out { // drain until closed
				}
				return
			}
		}
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	}()
	defer func() {
		n.w.mu.Lock()
		delete(n.w.conns, c)
		n.w.mu.Unlock()
		c.close()
		<-writerDone
		ws.Close()
	}()
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		var req struct {
			Op      string          `json:"op"`
			ID      string          `json:"id"`
			Token   string          `json:"token"`
			Room    string          `json:"room"`
			RoomID  string          `json:"room_id"`
			TxnID   string          `json:"txn_id"`
			Alias   string          `json:"alias"`
			Content json.RawMessage `json:"content"`
		}
		if err := json.Unmarshal(data, &req); err != nil {
			c.push(map[string]any{"op": "error", "code": "M_BAD_JSON", "message": "bad json"})
			continue
		}
		if c.user == "" {
			n.w.mu.Lock()
			c.user = n.w.tokens[req.Token]
			if c.user != "" && orgOf(c.user) == n.org {
				n.w.conns[c] = true
			}
			n.w.mu.Unlock()
			if req.Op != "auth" || c.user == "" {
				c.push(map[string]any{"op": "error", "code": "M_UNKNOWN_TOKEN", "message": "bad token"})
				return
			}
			c.push(map[string]any{"op": "ok", "id": req.ID, "user_id": c.user})
			continue
		}
		c.handle(req.Op, req.ID, req.Room, req.RoomID, req.TxnID, req.Alias, req.Content)
	}
}

func (c *fakeConn) push(v any) {
	b, _ := json.Marshal(v)
	c.enqueue(b)
}

// enqueue never blocks: a full queue is a slow consumer.
func (c *fakeConn) enqueue(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shut {
		return
	}
	select {
	case c.out <- b:
	default:
		c.shut = true
		close(c.out)
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "slow consumer"), time.Now().Add(time.Second))
	}
}

func (c *fakeConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.shut {
		c.shut = true
		close(c.out)
	}
}

func (c *fakeConn) handle(op, id, room, roomID, txnID, alias string, content json.RawMessage) {
	w := c.node.w
	errReply := func(code string) {
		m := map[string]any{"op": "error", "id": id, "code": code, "message": code}
		if code == "M_LIMIT_EXCEEDED" {
			m["retry_after_ms"] = 5
		}
		c.push(m)
	}
	switch op {
	case "ping":
		c.push(map[string]any{"op": "ok", "id": id})
	case "create_room":
		w.mu.Lock()
		w.nextID++
		rid := fmt.Sprintf("!room%d:%s", w.nextID, c.node.org)
		if alias != "" {
			full := "#" + alias + ":" + c.node.org
			if _, taken := w.aliases[full]; taken {
				w.mu.Unlock()
				errReply("M_ROOM_IN_USE")
				return
			}
			w.aliases[full] = rid
		}
		w.rooms[rid] = map[string]bool{c.user: true}
		w.mu.Unlock()
		c.push(map[string]any{"op": "ok", "id": id, "room_id": rid})
	case "join":
		w.mu.Lock()
		rid := room
		if strings.HasPrefix(room, "#") {
			rid = w.aliases[room]
		}
		members := w.rooms[rid]
		remote := orgOf(rid) != c.node.org
		if members != nil && (!remote || w.federated) {
			members[c.user] = true
		}
		w.mu.Unlock()
		switch {
		case remote && !w.federated:
			errReply("M_UNAVAILABLE")
		case members == nil:
			errReply("M_NOT_FOUND")
		default:
			c.push(map[string]any{"op": "ok", "id": id, "room_id": rid})
		}
	case "send":
		time.Sleep(w.sendDelay)
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.rooms[roomID][c.user] {
			c.push(map[string]any{"op": "error", "id": id, "code": "M_FORBIDDEN", "message": "not joined"})
			return
		}
		w.sends[c.user]++
		if w.limitEvery > 0 && w.sends[c.user]%w.limitEvery == 0 {
			c.push(map[string]any{"op": "error", "id": id, "code": "M_LIMIT_EXCEEDED", "message": "slow down", "retry_after_ms": 5})
			return
		}
		key := c.user + "\x00" + txnID
		if ev, ok := w.txns[key]; ok {
			c.push(map[string]any{"op": "ok", "id": id, "event_id": ev})
			return
		}
		w.pos++
		evID := fmt.Sprintf("$ev%d", w.pos)
		w.txns[key] = evID
		ev := map[string]any{"event_id": evID, "room_id": roomID, "sender": c.user, "origin": orgOf(c.user),
			"origin_ts": time.Now().UnixMilli(), "type": "m.room.message", "content": content, "stream_pos": w.pos}
		b, _ := json.Marshal(map[string]any{"op": "event", "event": ev})
		var fork []byte
		if w.forkEvery > 0 && w.pos%int64(w.forkEvery) == 0 {
			f := maps.Clone(ev)
			f["event_id"] = evID + "-fork"
			fork, _ = json.Marshal(map[string]any{"op": "event", "event": f})
		}
		for oc := range w.conns {
			if w.dropEventEvery > 0 && w.pos%int64(w.dropEventEvery) == 0 {
				break
			}
			if w.rooms[roomID][oc.user] && (orgOf(oc.user) == orgOf(roomID) || w.federated) {
				w.pushes++
				oc.node.pushes++
				if w.dropEvery > 0 && w.pushes%w.dropEvery == 0 {
					continue
				}
				oc.enqueue(b)
				if w.dupEvery > 0 && w.pushes%w.dupEvery == 0 {
					oc.enqueue(b)
				}
				if fork != nil {
					oc.enqueue(fork)
				}
			}
		}
		c.push(map[string]any{"op": "ok", "id": id, "event_id": evID})
	default:
		errReply("M_INVALID_PARAM")
	}
}
