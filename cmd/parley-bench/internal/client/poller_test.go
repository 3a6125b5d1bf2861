//go:build linux

package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func newTestPoller(t *testing.T, loops int) *Poller {
	t.Helper()
	p, err := newPoller(loops)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// registered counts the connections in the poller's tables.
func (p *Poller) registered() int {
	n := 0
	for _, l := range p.loops {
		l.mu.Lock()
		n += len(l.conns)
		l.mu.Unlock()
	}
	return n
}

// noLoopsLeft waits a moment for the goroutines of closed pollers to be gone (a loop's
// deferred WaitGroup.Done runs before its last instructions), and says if they are.
func noLoopsLeft() bool {
	for range 100 {
		if loopGoroutines() == 0 {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// loopGoroutines counts the goroutines running a poller loop.
func loopGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "(*pollLoop).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func TestPollerAuthSendAndPush(t *testing.T)   { testAuthSendAndPush(t, newTestPoller(t, 2)) }
func TestPollerBadToken(t *testing.T)          { testBadToken(t, newTestPoller(t, 2)) }
func TestPollerSlowConsumerClose(t *testing.T) { testSlowConsumerClose(t, newTestPoller(t, 2)) }

func TestPollerFallbacks(t *testing.T) {
	n := newTinyNode(t)
	_, wsURL, _ := n.target().URLs()
	s := register(t, n, "dave")
	p := newTestPoller(t, 1)
	ctx := context.Background()
	q, err := Dial(ctx, wsURL, s.AccessToken, DialOptions{TokenInQuery: true, Poller: p})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(time.Second)
	if q.Polled() || p.registered() != 0 {
		t.Fatal("a TokenInQuery connection went to the poller")
	}
	// A closed poller takes no more connections: they get a reader goroutine.
	p.Close()
	c, err := Dial(ctx, wsURL, s.AccessToken, DialOptions{Poller: p})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(time.Second)
	if c.Polled() {
		t.Fatal("a closed poller took a connection")
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestPollerManySubscribers: events reach every polled subscriber in order, large ones
// (longer than a loop's read buffer) included, while replies go to their calls; then the
// connections are closed and aborted, some while events still flow, and the poller stops
// without a goroutine left.
func TestPollerManySubscribers(t *testing.T) {
	const subs, msgs = 24, 120
	n := newTinyNode(t)
	_, wsURL, _ := n.target().URLs()
	p := newTestPoller(t, 3)
	ctx := context.Background()

	pubS := register(t, n, "pub")
	pub, err := Dial(ctx, wsURL, pubS.AccessToken, DialOptions{Poller: p}) // its replies come through the poller
	if err != nil {
		t.Fatal(err)
	}
	room, err := pub.CreateRoom(ctx, "", "public", "")
	if err != nil {
		t.Fatal(err)
	}
	type sub struct {
		c      *Conn
		mu     sync.Mutex
		bodies []string
	}
	ss := make([]*sub, subs)
	for i := range ss {
		s := &sub{}
		sess := register(t, n, fmt.Sprintf("sub%d", i))
		views := i%2 == 1 // half of them take views of the frames, and copy what they keep
		c, err := Dial(ctx, wsURL, sess.AccessToken, DialOptions{Poller: p, EventViews: views, OnEvent: func(ev *Event, at time.Time) {
			body := ev.Content.Body
			if views {
				body = strings.Clone(body)
			}
			s.mu.Lock()
			s.bodies = append(s.bodies, body)
			s.mu.Unlock()
		}})
		if err != nil {
			t.Fatal(err)
		}
		if !c.Polled() {
			t.Fatal("subscriber not polled")
		}
		s.c = c
		ss[i] = s
		if _, err := c.Join(ctx, room); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.registered(); got != subs+1 {
		t.Fatalf("%d connections registered, want %d", got, subs+1)
	}
	body := func(i int) string {
		switch i % 40 {
		case 7:
			return fmt.Sprintf("%d %s", i, strings.Repeat("big☃", 30_000)) // 150 KB: read in several pieces
		case 8:
			return fmt.Sprintf("%d \"quoted\" \\ \u00e9", i)
		}
		return fmt.Sprint(i)
	}
	for i := 0; i < msgs; i++ {
		r, err := pub.Send(ctx, room, fmt.Sprint("t", i), body(i))
		if err != nil || r.EventID == "" {
			t.Fatalf("send %d: %+v %v", i, r, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range ss {
		for s.c.Events() < msgs {
			if time.Now().After(deadline) {
				t.Fatalf("a subscriber saw %d of %d events", s.c.Events(), msgs)
			}
			time.Sleep(5 * time.Millisecond)
		}
		s.mu.Lock()
		for i, b := range s.bodies {
			if b != body(i) {
				t.Fatalf("event %d: body %.40q, want %.40q", i, b, body(i))
			}
		}
		s.mu.Unlock()
		if s.c.BadFrames() != 0 || s.c.Err() != nil {
			t.Fatalf("bad frames %d, err %v", s.c.BadFrames(), s.c.Err())
		}
	}
	if pub.BadFrames() == 0 {
		t.Fatal("the publisher's non-JSON frames were not counted")
	}

	// Close and abort everything while the publisher keeps sending.
	var stop atomic.Bool
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := 0; !stop.Load(); i++ {
			if _, err := pub.Send(ctx, room, fmt.Sprint("late", i), "late"); err != nil {
				return
			}
		}
	}()
	time.Sleep(20 * time.Millisecond)
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		var wg sync.WaitGroup
		for i, s := range ss {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i%2 == 0 {
					s.c.Close(time.Second)
				} else {
					s.c.Abort()
				}
				s.c.Abort() // again: returns at once
				s.c.Close(time.Second)
			}()
		}
		wg.Wait()
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close/Abort hang")
	}
	stop.Store(true)
	<-sent
	for i, s := range ss {
		e := s.c.Err()
		switch {
		case e == nil:
			t.Fatal("closed connection reports no error")
		case i%2 == 0 && e.Code != websocket.CloseNormalClosure && !errors.Is(e, net.ErrClosed):
			t.Fatalf("closed: %v", e) // the node's echo of our 1000, or our own close if it is late
		case i%2 == 1 && (e.Code != 0 || !errors.Is(e, net.ErrClosed)):
			t.Fatalf("aborted: %v", e)
		}
		if _, err := s.c.Join(ctx, room); !errors.As(err, new(*ClosedError)) {
			t.Fatalf("call on a closed connection: %v", err)
		}
	}
	if got := p.registered(); got != 1 {
		t.Fatalf("%d connections still registered, want the publisher's", got)
	}
	pub.Close(time.Second)
	if got := p.registered(); got != 0 {
		t.Fatalf("%d connections still registered", got)
	}
	if loopGoroutines() < 3 {
		t.Fatalf("%d loop goroutines, want 3", loopGoroutines())
	}
	p.Close()
	p.Close()
	if !noLoopsLeft() {
		t.Fatalf("%d loop goroutines left after Close", loopGoroutines())
	}
}

// scriptNode answers the auth frame, then runs script on the server side of the socket.
func scriptNode(t *testing.T, script func(ws *websocket.Conn)) string {
	t.Helper()
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer ws.Close()
		var req struct{ ID string }
		if err := ws.ReadJSON(&req); err != nil {
			return
		}
		if err := ws.WriteJSON(map[string]any{"op": "ok", "id": req.ID, "user_id": "@u:x"}); err != nil {
			return
		}
		script(ws)
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		wg.Wait()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/v1/ws"
}

type scriptResult struct {
	events []string
	err    *ClosedError
	server []string // what the server read back
}

// runScript dials a script node with or without a poller and returns how it went.
func runScript(t *testing.T, p *Poller, script func(ws *websocket.Conn, seen func(string))) scriptResult {
	t.Helper()
	var mu sync.Mutex
	var res scriptResult
	seen := func(s string) {
		mu.Lock()
		res.server = append(res.server, s)
		mu.Unlock()
	}
	done := make(chan struct{})
	url := scriptNode(t, func(ws *websocket.Conn) {
		defer close(done)
		ws.SetPongHandler(func(s string) error { seen("pong:" + s); return nil })
		script(ws, seen)
	})
	var evs []string
	c, err := Dial(context.Background(), url, "tok", DialOptions{Poller: p, ReadLimit: 1000, OnEvent: func(ev *Event, _ time.Time) {
		evs = append(evs, ev.Content.Body) // the one reader: no lock needed
	}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Polled() != (p != nil) {
		t.Fatalf("polled %v", c.Polled())
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the script did not end")
	}
	c.Close(time.Second)
	res.events, res.err = evs, c.Err()
	if p != nil && p.registered() != 0 {
		t.Fatal("an ended connection is still registered")
	}
	return res
}

func eventPush(body string) []byte {
	b, _ := json.Marshal(map[string]any{"op": "event", "event": map[string]any{"room_id": "!r:x", "type": "m.room.message",
		"content": map[string]any{"msgtype": "m.text", "body": body}}})
	return b
}

// readUntilClose reads what the client sends until its close frame, reporting the close.
func readUntilClose(ws *websocket.Conn, seen func(string)) {
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				seen(fmt.Sprintf("close:%d %s", ce.Code, ce.Text))
			}
			return
		}
	}
}

// TestPollerFramesLikeGoroutine runs raw frame scripts against both readers: the poller
// must see the same events, answer the same (pong, close echo, protocol close) and end
// with the same error.
func TestPollerFramesLikeGoroutine(t *testing.T) {
	scripts := map[string]func(ws *websocket.Conn, seen func(string)){
		"fragments, ping, close": func(ws *websocket.Conn, seen func(string)) {
			push := eventPush("fragmented")
			raw := cat(srvFrame(false, wsOpText, push[:10]), srvFrame(true, wsOpPing, []byte("ping-1")),
				srvFrame(false, wsOpContinuation, push[10:20]), srvFrame(true, wsOpContinuation, push[20:]),
				srvFrame64(true, wsOpText, eventPush("long form")),
				closeFrame(4000, "bye"))
			for i := range raw { // a byte per write: every read ends mid-frame
				if _, err := ws.NetConn().Write(raw[i : i+1]); err != nil {
					return
				}
				if i%64 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			readUntilClose(ws, seen)
		},
		"slow consumer": func(ws *websocket.Conn, seen func(string)) {
			_ = ws.WriteMessage(websocket.TextMessage, eventPush("one"))
			_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"error","code":"M_LIMIT_EXCEEDED","message":"queue full"}`))
			_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(ClosePolicyViolation, "slow consumer"))
			readUntilClose(ws, seen)
		},
		"masked": func(ws *websocket.Conn, seen func(string)) {
			_ = ws.WriteMessage(websocket.TextMessage, eventPush("before"))
			_, _ = ws.NetConn().Write([]byte{0x81, 0x82, 0, 0, 0, 0, '{', '}'})
			readUntilClose(ws, seen)
		},
		"too big": func(ws *websocket.Conn, seen func(string)) { // the limit is 1000
			_ = ws.WriteMessage(websocket.TextMessage, eventPush(strings.Repeat("x", 2000)))
			readUntilClose(ws, seen)
		},
		"eof": func(ws *websocket.Conn, seen func(string)) {
			_ = ws.WriteMessage(websocket.TextMessage, eventPush("last"))
			_ = ws.NetConn().Close()
		},
		"eof mid-frame": func(ws *websocket.Conn, seen func(string)) {
			_, _ = ws.NetConn().Write(srvFrame(true, wsOpText, eventPush("cut"))[:20])
			_ = ws.NetConn().Close()
		},
	}
	for name, script := range scripts {
		t.Run(name, func(t *testing.T) {
			want := runScript(t, nil, script)
			got := runScript(t, newTestPoller(t, 1), script)
			t.Logf("goroutine reader: %q %v %q", want.events, want.err, want.server)
			if fmt.Sprint(got.events) != fmt.Sprint(want.events) || got.err.Code != want.err.Code || got.err.Reason != want.err.Reason ||
				got.err.Error() != want.err.Error() || fmt.Sprint(got.server) != fmt.Sprint(want.server) {
				t.Fatalf("poller: %q %v %q\ngoroutine reader: %q %v %q", got.events, got.err, got.server, want.events, want.err, want.server)
			}
		})
	}
	// What the scripts must have shown, whichever the reader.
	res := runScript(t, newTestPoller(t, 1), scripts["fragments, ping, close"])
	if fmt.Sprint(res.events) != "[fragmented long form]" || res.err.Code != 4000 || res.err.Reason != "bye" ||
		fmt.Sprint(res.server) != "[pong:ping-1 close:4000 ]" {
		t.Fatalf("%q %v %q", res.events, res.err, res.server)
	}
	res = runScript(t, newTestPoller(t, 1), scripts["slow consumer"])
	if res.err.Code != ClosePolicyViolation || res.err.Reason != "slow consumer (M_LIMIT_EXCEEDED: queue full)" {
		t.Fatalf("%v", res.err)
	}
	res = runScript(t, newTestPoller(t, 1), scripts["masked"])
	if res.err.Code != 0 || res.err.Error() != "connection closed: websocket: bad MASK" || fmt.Sprint(res.server) != "[close:1002 bad MASK]" {
		t.Fatalf("%v %q", res.err, res.server)
	}
	res = runScript(t, newTestPoller(t, 1), scripts["too big"])
	if !errors.Is(res.err, websocket.ErrReadLimit) || fmt.Sprint(res.server) != "[close:1009 ]" {
		t.Fatalf("%v %q", res.err, res.server)
	}
	res = runScript(t, newTestPoller(t, 1), scripts["eof"])
	if fmt.Sprint(res.events) != "[last]" || res.err.Code != websocket.CloseAbnormalClosure {
		t.Fatalf("%q %v", res.events, res.err)
	}
}

// TestPollerConnectionReset: a reset ends the connection as it ends a goroutine reader's.
func TestPollerConnectionReset(t *testing.T) {
	script := func(ws *websocket.Conn, seen func(string)) {
		_ = ws.NetConn().(*net.TCPConn).SetLinger(0)
		_ = ws.NetConn().Close()
	}
	addr := regexp.MustCompile(`127\.0\.0\.1:\d+`)
	var errs []string
	for _, p := range []*Poller{nil, newTestPoller(t, 1)} {
		res := runScript(t, p, script)
		if !strings.Contains(res.err.Error(), "connection reset by peer") || res.err.Code != 0 {
			t.Fatalf("poller %v: %v", p != nil, res.err)
		}
		errs = append(errs, addr.ReplaceAllString(res.err.Error(), "ADDR"))
	}
	if errs[0] != errs[1] {
		t.Fatalf("%q", errs)
	}
}

// TestPollerWriteErrorEndsConnection: a failed write takes the connection out of the
// poller and ends it, failing its pending calls.
func TestPollerWriteErrorEndsConnection(t *testing.T) {
	release := make(chan struct{})
	url := scriptNode(t, func(*websocket.Conn) { <-release }) // neither reads nor closes
	t.Cleanup(func() { close(release) })                      // runs before the node's cleanup
	p := newTestPoller(t, 1)
	ctx := context.Background()
	c, err := Dial(ctx, url, "tok", DialOptions{Poller: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ws.NetConn().(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var ce *ClosedError
	if err := c.Ping(ctx); !errors.As(err, &ce) || !strings.Contains(err.Error(), "broken pipe") {
		t.Fatalf("ping: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not done after a write error")
	}
	if e := c.Err(); e == nil || !errors.Is(e, net.ErrClosed) || p.registered() != 0 {
		t.Fatalf("err %v, registered %d", e, p.registered())
	}
	c.Close(time.Second)
}

// TestPollerCloseEndsItsConnections: closing the poller ends what it still serves, so
// that pending calls fail and Close returns.
func TestPollerCloseEndsItsConnections(t *testing.T) {
	url := scriptNode(t, func(ws *websocket.Conn) { readUntilClose(ws, func(string) {}) }) // answers nothing
	p := newTestPoller(t, 2)
	ctx := context.Background()
	var conns []*Conn
	for range 4 {
		c, err := Dial(ctx, url, "tok", DialOptions{Poller: p})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	calls := make(chan error, len(conns))
	for _, c := range conns {
		go func() { calls <- c.Ping(ctx) }()
	}
	time.Sleep(50 * time.Millisecond)
	p.Close()
	for range conns {
		select {
		case err := <-calls:
			if !errors.As(err, new(*ClosedError)) {
				t.Fatalf("pending call: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a pending call outlived the poller")
		}
	}
	for _, c := range conns {
		c.Close(time.Second)
		if e := c.Err(); e == nil || !errors.Is(e, net.ErrClosed) {
			t.Fatalf("err %v", e)
		}
	}
	if !noLoopsLeft() {
		t.Fatalf("%d loop goroutines left", loopGoroutines())
	}
}
