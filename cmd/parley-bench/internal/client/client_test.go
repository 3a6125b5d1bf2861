package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tinyNode is a minimal in-test stand-in for a Parley node: register/login,
// metrics, and a WebSocket that authenticates (frame or query token),
// creates/joins rooms, and echoes every send as a push to every connection
// in the room (the sender's included).
type tinyNode struct {
	mu     sync.Mutex
	tokens map[string]string          // token -> user id
	conns  map[*tinyConn]bool         // authenticated
	rooms  map[string]map[string]bool // room -> members
	seq    atomic.Int64
	srv    *httptest.Server
	upg    websocket.Upgrader
	wg     sync.WaitGroup
}

type tinyConn struct {
	ws   *websocket.Conn
	user string
	wmu  sync.Mutex
}

func (c *tinyConn) send(v any) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.WriteJSON(v)
}

func newTinyNode(t *testing.T) *tinyNode {
	n := &tinyNode{tokens: map[string]string{}, conns: map[*tinyConn]bool{}, rooms: map[string]map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/register", func(w http.ResponseWriter, r *http.Request) {
		var b struct{ Username, Password string }
		_ = json.NewDecoder(r.Body).Decode(&b)
		if b.Username == "taken" {
			w.WriteHeader(http.StatusConflict)
			_, _ = w.Write([]byte(`{"code":"M_USER_IN_USE","message":"taken"}`))
			return
		}
		uid := "@" + b.Username + ":tiny.test"
		tok := "tok-" + b.Username
		n.mu.Lock()
		n.tokens[tok] = uid
		n.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]string{"user_id": uid, "access_token": tok})
	})
	mux.HandleFunc("POST /v1/login", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"code":"M_FORBIDDEN","message":"no"}`))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("# HELP process_resident_memory_bytes x\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1.2345678e+07\n"))
	})
	mux.HandleFunc("GET /v1/ws", n.serveWS)
	n.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		n.srv.CloseClientConnections()
		n.srv.Close()
		n.wg.Wait()
	})
	return n
}

func (n *tinyNode) target() Target { return Target{Addr: n.srv.Listener.Addr().String()} }

func (n *tinyNode) serveWS(w http.ResponseWriter, r *http.Request) {
	user := ""
	if tok := r.URL.Query().Get("access_token"); tok != "" {
		n.mu.Lock()
		user = n.tokens[tok]
		n.mu.Unlock()
		if user == "" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"code":"M_UNKNOWN_TOKEN","message":"bad token"}`))
			return
		}
	}
	ws, err := n.upg.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	n.wg.Add(1)
	defer n.wg.Done()
	c := &tinyConn{ws: ws, user: user}
	defer func() {
		n.mu.Lock()
		delete(n.conns, c)
		n.mu.Unlock()
		ws.Close()
	}()
	if user != "" {
		n.mu.Lock()
		n.conns[c] = true
		n.mu.Unlock()
	}
	for {
		var req map[string]any
		if err := ws.ReadJSON(&req); err != nil {
			return
		}
		op, _ := req["op"].(string)
		id, _ := req["id"].(string)
		if c.user == "" {
			tok, _ := req["token"].(string)
			n.mu.Lock()
			c.user = n.tokens[tok]
			if c.user != "" {
				n.conns[c] = true
			}
			n.mu.Unlock()
			if op != "auth" || c.user == "" {
				c.send(map[string]any{"op": "error", "code": "M_UNKNOWN_TOKEN", "message": "bad token"})
				c.wmu.Lock()
				_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "unauthorized"))
				c.wmu.Unlock()
				return
			}
			c.send(map[string]any{"op": "ok", "id": id, "user_id": c.user})
			continue
		}
		switch op {
		case "ping":
			c.send(map[string]any{"op": "ok", "id": id})
		case "create_room":
			room := "!r" + id + ":tiny.test"
			n.mu.Lock()
			n.rooms[room] = map[string]bool{c.user: true}
			n.mu.Unlock()
			c.send(map[string]any{"op": "ok", "id": id, "room_id": room})
		case "join":
			room, _ := req["room"].(string)
			n.mu.Lock()
			members := n.rooms[room]
			if members != nil {
				members[c.user] = true
			}
			n.mu.Unlock()
			if members == nil {
				c.send(map[string]any{"op": "error", "id": id, "code": "M_NOT_FOUND", "message": "no room"})
				continue
			}
			c.send(map[string]any{"op": "ok", "id": id, "room_id": room})
		case "send":
			room, _ := req["room_id"].(string)
			content, _ := req["content"].(map[string]any)
			body, _ := content["body"].(string)
			if body == "limit" {
				c.send(map[string]any{"op": "error", "id": id, "code": "M_LIMIT_EXCEEDED", "message": "slow down", "retry_after_ms": 250})
				continue
			}
			if body == "slow" {
				c.wmu.Lock()
				_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "slow consumer"))
				c.wmu.Unlock()
				return
			}
			pos := n.seq.Add(1)
			evID := "$ev" + room + id + c.user
			c.send(map[string]any{"op": "ok", "id": id, "event_id": evID})
			ev := map[string]any{"event_id": evID, "room_id": room, "sender": c.user, "origin_ts": time.Now().UnixMilli(),
				"type": "m.room.message", "content": content, "stream_pos": pos, "prev_events": []string{}, "depth": pos}
			n.mu.Lock()
			var targets []*tinyConn
			for oc := range n.conns {
				if n.rooms[room][oc.user] {
					targets = append(targets, oc)
				}
			}
			n.mu.Unlock()
			for _, oc := range targets {
				e := ev
				if oc.user == c.user {
					e = map[string]any{}
					for k, v := range ev {
						e[k] = v
					}
					e["unsigned"] = map[string]any{"txn_id": req["txn_id"]}
				}
				oc.send(map[string]any{"op": "event", "event": e})
			}
			// an ephemeral push the client must ignore, and a non-JSON frame it must survive
			c.send(map[string]any{"op": "typing", "room_id": room, "user_ids": []string{}})
			c.wmu.Lock()
			_ = ws.WriteMessage(websocket.TextMessage, []byte("not json"))
			c.wmu.Unlock()
		default:
			c.send(map[string]any{"op": "error", "id": id, "code": "M_INVALID_PARAM", "message": "unknown op"})
		}
	}
}

func TestTargetURLs(t *testing.T) {
	cases := []struct {
		t          Target
		base, ws   string
		shouldFail bool
	}{
		{Target{Addr: "127.0.0.1:8080"}, "http://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/ws", false},
		{Target{Addr: "127.0.0.1:8080", TLS: true}, "https://127.0.0.1:8080", "wss://127.0.0.1:8080/v1/ws", false},
		{Target{Addr: "https://node.test:8443"}, "https://node.test:8443", "wss://node.test:8443/v1/ws", false},
		{Target{Addr: "ws://[::1]:8080/", TLS: true}, "http://[::1]:8080", "ws://[::1]:8080/v1/ws", false},
		{Target{Addr: ""}, "", "", true},
		{Target{Addr: "ftp://x:1"}, "", "", true},
	}
	for _, c := range cases {
		base, ws, err := c.t.URLs()
		if (err != nil) != c.shouldFail || base != c.base || ws != c.ws {
			t.Errorf("%+v: got %q %q %v", c.t, base, ws, err)
		}
	}
	if h := (Target{Addr: "[::1]:80"}).Host(); h != "::1" {
		t.Errorf("Host = %q", h)
	}
}

func TestParseMetric(t *testing.T) {
	text := "# HELP x y\nprocess_resident_memory_bytes_total 5\nprocess_resident_memory_bytes{node=\"a\"} 3.5e+06 1700000000\n"
	v, err := ParseMetric(strings.NewReader(text), "process_resident_memory_bytes")
	if err != nil || v != 3.5e6 {
		t.Fatalf("v=%v err=%v", v, err)
	}
	if _, err := ParseMetric(strings.NewReader("foo 1\n"), "bar"); !errors.Is(err, ErrMetricNotFound) {
		t.Fatalf("err=%v", err)
	}
	if _, err := ParseMetric(strings.NewReader("bar zz\n"), "bar"); err == nil {
		t.Fatal("bad value accepted")
	}
}

func TestHTTP(t *testing.T) {
	n := newTinyNode(t)
	base, _, _ := n.target().URLs()
	hc := NewHTTPClient(false, 5*time.Second, 4)
	defer hc.CloseIdleConnections()
	api := &API{Base: base, HC: hc}
	ctx := context.Background()
	s, err := api.Register(ctx, "alice", "password1")
	if err != nil || s.UserID != "@alice:tiny.test" || s.AccessToken == "" || s.Org() != "tiny.test" {
		t.Fatalf("register: %+v %v", s, err)
	}
	_, err = api.Register(ctx, "taken", "password1")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 409 || ae.Code != "M_USER_IN_USE" {
		t.Fatalf("register taken: %v", err)
	}
	if _, err := api.Login(ctx, "x", "y"); !errors.As(err, &ae) || ae.Code != "M_FORBIDDEN" {
		t.Fatalf("login: %v", err)
	}
	v, err := FetchMetric(ctx, hc, base+"/metrics", "process_resident_memory_bytes")
	if err != nil || v != 12345678 {
		t.Fatalf("metric %v %v", v, err)
	}
	if _, err := FetchMetric(ctx, hc, base+"/nope", "x"); err == nil {
		t.Fatal("404 accepted")
	}
}

func register(t *testing.T, n *tinyNode, user string) Session {
	t.Helper()
	base, _, _ := n.target().URLs()
	hc := NewHTTPClient(false, 5*time.Second, 4)
	defer hc.CloseIdleConnections()
	s, err := (&API{Base: base, HC: hc}).Register(context.Background(), user, "password1")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestWebSocketAuthSendAndPush(t *testing.T) { testAuthSendAndPush(t, nil) }

// Sends from many goroutines share writes (Conn.write): every frame still reaches the node
// whole and in its own message, at each of the three length encodings, and every send gets its
// own answer.
func TestConcurrentSendsShareWrites(t *testing.T) {
	n := newTinyNode(t)
	_, wsURL, _ := n.target().URLs()
	alice := register(t, n, "alice")
	ctx := context.Background()
	var mu sync.Mutex
	bodies := map[string]int{} // pushed back by the node: each must arrive once, whole
	c, err := Dial(ctx, wsURL, alice.AccessToken, DialOptions{OnEvent: func(ev *Event, _ time.Time) {
		mu.Lock()
		bodies[ev.Content.Body]++
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(time.Second)
	room, err := c.CreateRoom(ctx, "r", "public", "")
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{0, 1, 125, 126, 65535, 65536, 70000}
	const senders, each = 16, 20
	var wg sync.WaitGroup
	errs := make(chan error, senders*each)
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				body := fmt.Sprintf("%d-%d-", g, i)
				body += strings.Repeat("x", sizes[(g+i)%len(sizes)])
				r, err := c.Send(ctx, room, fmt.Sprintf("t%d-%d", g, i), body)
				if err != nil {
					errs <- err
					continue
				}
				if !strings.HasPrefix(r.EventID, "$ev"+room) {
					errs <- fmt.Errorf("send %d-%d: event id %q", g, i, r.EventID)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Events() < senders*each && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for g := range senders {
		for i := range each {
			body := fmt.Sprintf("%d-%d-", g, i) + strings.Repeat("x", sizes[(g+i)%len(sizes)])
			if bodies[body] != 1 {
				t.Errorf("body of send %d-%d (%d bytes) pushed %d times", g, i, len(body), bodies[body])
			}
		}
	}
	if len(bodies) != senders*each {
		t.Errorf("%d distinct bodies pushed, want %d", len(bodies), senders*each)
	}
}

// testAuthSendAndPush runs with p reading alice and bob, or with reader goroutines (nil).
func testAuthSendAndPush(t *testing.T, p *Poller) {
	n := newTinyNode(t)
	_, wsURL, _ := n.target().URLs()
	alice := register(t, n, "alice")
	bob := register(t, n, "bob")
	ctx := context.Background()

	type got struct {
		ev *Event
		at time.Time
	}
	aliceEvents := make(chan got, 100)
	bobEvents := make(chan got, 100)
	a, err := Dial(ctx, wsURL, alice.AccessToken, DialOptions{
		LocalIP: net.ParseIP("127.0.0.1"), ReadBufferSize: 1024, WriteBufferSize: 1024,
		OnEvent: func(ev *Event, at time.Time) { e := *ev; aliceEvents <- got{&e, at} }, // ev is the reader's
		Poller:  p,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(time.Second)
	if a.UserID() != alice.UserID {
		t.Fatalf("user id %q", a.UserID())
	}
	b, err := Dial(ctx, wsURL, bob.AccessToken, DialOptions{
		TokenInQuery: p == nil, // the poller does not take TokenInQuery connections
		OnEvent:      func(ev *Event, at time.Time) { e := *ev; bobEvents <- got{&e, at} },
		Poller:       p,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(time.Second)
	if a.Polled() != (p != nil) || b.Polled() != (p != nil) {
		t.Fatalf("polled: %v %v", a.Polled(), b.Polled())
	}

	if err := a.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	room, err := a.CreateRoom(ctx, "bench", "public", "")
	if err != nil || !strings.HasPrefix(room, "!") {
		t.Fatalf("create_room: %q %v", room, err)
	}
	if got, err := b.Join(ctx, room); err != nil || got != room {
		t.Fatalf("join: %q %v", got, err)
	}
	if _, err := b.Join(ctx, "!nope:tiny.test"); Code(err) != "M_NOT_FOUND" {
		t.Fatalf("join unknown room: %v", err)
	}

	before := time.Now()
	r, err := a.Send(ctx, room, "txn1", "hello")
	if err != nil || r.EventID == "" || r.At.Before(before) {
		t.Fatalf("send: %+v %v", r, err)
	}
	for _, ch := range []chan got{aliceEvents, bobEvents} {
		select {
		case g := <-ch:
			if g.ev.EventID != r.EventID || g.ev.RoomID != room || g.ev.Content.Body != "hello" || g.ev.Type != "m.room.message" || g.ev.Sender != alice.UserID {
				t.Fatalf("push: %+v", g.ev)
			}
			if ch == aliceEvents && g.ev.Unsigned.TxnID != "txn1" {
				t.Fatalf("own push without txn_id: %+v", g.ev)
			}
			if g.at.Before(before) {
				t.Fatal("receive time before send")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no push")
		}
	}

	// Rate limit errors carry retry_after_ms.
	_, err = a.Send(ctx, room, "txn2", "limit")
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != "M_LIMIT_EXCEEDED" || pe.RetryAfter != 250*time.Millisecond {
		t.Fatalf("limit: %v", err)
	}

	// Many concurrent calls on one connection are matched to their replies.
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := a.Send(ctx, room, "c", "concurrent"); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	deadline := time.After(5 * time.Second)
	for seen := 0; seen < 50; {
		select {
		case <-bobEvents:
			seen++
		case <-deadline:
			t.Fatalf("bob saw %d of 50 pushes", seen)
		}
	}
	if b.Events() < 51 || a.BadFrames() == 0 {
		t.Fatalf("events %d bad frames %d", b.Events(), a.BadFrames())
	}
	// A call that times out does not disturb the connection.
	tctx, cancel := context.WithTimeout(ctx, time.Nanosecond)
	_, err = a.Send(tctx, room, "late", "late")
	cancel()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timeout: %v", err)
	}
	if err := a.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Err() != nil {
		t.Fatal("open connection reports an error")
	}
}

func TestWebSocketBadToken(t *testing.T) { testBadToken(t, nil) }

func testBadToken(t *testing.T, p *Poller) {
	n := newTinyNode(t)
	_, wsURL, _ := n.target().URLs()
	ctx := context.Background()
	_, err := Dial(ctx, wsURL, "wrong", DialOptions{Timeout: 3 * time.Second, Poller: p})
	var ce *ClosedError
	if !errors.As(err, &ce) || ce.Code != CloseAuthFailed || !strings.Contains(ce.Error(), "M_UNKNOWN_TOKEN") {
		t.Fatalf("bad auth frame: %v", err)
	}
	_, err = Dial(ctx, wsURL, "wrong", DialOptions{TokenInQuery: true, Poller: p})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 401 || ae.Code != "M_UNKNOWN_TOKEN" {
		t.Fatalf("bad query token: %v", err)
	}
	if _, err := Dial(ctx, "ws://127.0.0.1:1/v1/ws", "x", DialOptions{Timeout: time.Second, Poller: p}); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
}

func TestWebSocketSlowConsumerClose(t *testing.T) { testSlowConsumerClose(t, nil) }

func testSlowConsumerClose(t *testing.T, p *Poller) {
	n := newTinyNode(t)
	_, wsURL, _ := n.target().URLs()
	s := register(t, n, "carol")
	ctx := context.Background()
	c, err := Dial(ctx, wsURL, s.AccessToken, DialOptions{LocalIP: net.ParseIP("127.0.0.2"), Poller: p})
	if err != nil {
		t.Fatal(err)
	}
	if c.Polled() != (p != nil) {
		t.Fatalf("polled %v", c.Polled())
	}
	room, err := c.CreateRoom(ctx, "", "private", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Send(ctx, room, "t", "slow")
	var ce *ClosedError
	if !errors.As(err, &ce) {
		t.Fatalf("want ClosedError, got %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not done")
	}
	if e := c.Err(); e == nil || e.Code != ClosePolicyViolation || e.Reason != "slow consumer" {
		t.Fatalf("close error %+v", e)
	}
	if _, err := c.Send(ctx, room, "t2", "after"); !errors.As(err, &ce) {
		t.Fatalf("send after close: %v", err)
	}
	c.Close(time.Second) // no-op, must not block
	c.Close(time.Second)
}
