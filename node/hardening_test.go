package node

// Holes found in an audit of the client-facing surface, each shown by a test that failed
// before its fix.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// An unban's reason was stored and relayed unchecked, where a kick's or a ban's is refused
// over 1 KiB or with a NUL; the other orgs' inboxes check member events' reasons and
// dropped such an unban, so the user stayed banned there.
func TestUnbanReasonIsChecked(t *testing.T) {
	t.Parallel()
	m := setup(t, nil)
	room := m.publicRoom(t, m.bob)
	m.alice.ok(map[string]any{"op": "ban", "room_id": room, "user_id": m.bobID})
	waitMember(t, m.alice, room, m.bobID, "ban")
	runFails(t, []failCase{
		{"unban reason too long", m.alice, map[string]any{"op": "unban", "room_id": room, "user_id": m.bobID, "reason": strings.Repeat("r", 1025)}, "M_TOO_LARGE"},
		{"unban reason with NUL", m.alice, map[string]any{"op": "unban", "room_id": room, "user_id": m.bobID, "reason": "a\x00b"}, "M_INVALID_PARAM"},
	})
	if ms := membersOf(m.alice, room); ms[m.bobID]["membership"] != "ban" {
		t.Fatalf("a refused unban unbanned: %v", ms[m.bobID])
	}
	m.alice.ok(map[string]any{"op": "unban", "room_id": room, "user_id": m.bobID, "reason": strings.Repeat("r", 1024)})
	if e := waitMember(t, m.alice, room, m.bobID, "leave"); contentOf(e)["reason"] != strings.Repeat("r", 1024) {
		t.Fatalf("unban event %v", e)
	}
}

// typing was not rate limited: each call goes to every node of the org and, in a federated
// room, as a signed EDU to every org in the room, and each change is pushed to every member.
func TestTypingIsRateLimited(t *testing.T) {
	t.Parallel()
	m := setup(t, func(o *Options) { o.SendPerSecond = 1; o.SendBurst = 5 })
	room := m.publicRoom(t, m.bob)
	start := time.Now()
	accepted, limited := 0, 0
	for i := range 40 {
		r := m.alice.request(map[string]any{"op": "typing", "room_id": room, "typing": i%2 == 0, "timeout_ms": 60000})
		switch {
		case r["op"] == "ok":
			accepted++
		case r["code"] == "M_LIMIT_EXCEEDED":
			wantLimitedOp(t, r)
			limited++
		default:
			t.Fatalf("typing %d: %v", i, r)
		}
	}
	// The burst (less what creating the room took) and one a second after it.
	if most := 5 + int(time.Since(start).Seconds()) + 1; accepted > most || limited == 0 {
		t.Fatalf("%d typing requests accepted, %d limited in %v; want at most %d accepted", accepted, limited, time.Since(start), most)
	}
	// Bob was told of the accepted changes only.
	marker := m.bob.send(room, "marker", "marker")
	pushes := 0
	for {
		p := m.bob.nextPush(func(p map[string]any) bool {
			return p["op"] == "typing" || p["op"] == "event" && p["event"].(map[string]any)["event_id"] == marker
		})
		if p["op"] == "event" {
			break
		}
		pushes++
	}
	if pushes > accepted {
		t.Fatalf("bob got %d typing pushes for %d accepted requests", pushes, accepted)
	}
}

// queuedBytes sums what the node holds queued, unwritten, for user's connections.
func queuedBytes(srv *Server, user string) int {
	srv.connMu.Lock()
	defer srv.connMu.Unlock()
	total := 0
	for s := range srv.conns {
		if s.user != user {
			continue
		}
		s.mu.Lock()
		for _, f := range s.pending {
			total += len(f)
		}
		s.mu.Unlock()
	}
	return total
}

// SendQueue bounds a connection's queue in frames, and one small request can ask for
// megabytes (a history page of 100 large events): a client that sent such requests without
// reading the answers made the node hold them all. The reader now waits while more than
// maxQueuedBytes is queued, and a client that reads in the end gets every answer.
func TestAnswersPileUpOnlyAsFarAsTheClientReads(t *testing.T) {
	t.Parallel()
	m := setup(t, nil)
	room := m.publicRoom(t, m.bob)
	body := strings.Repeat("0123456789", 3000) // 30 KB
	var sent []chan map[string]any
	for i := range 100 {
		sent = append(sent, m.alice.pipeline(map[string]any{"op": "send", "room_id": room, "txn_id": fmt.Sprintf("big%d", i),
			"content": map[string]any{"msgtype": "m.text", "body": body}}))
	}
	for _, ch := range sent {
		if r := <-ch; r["op"] != "ok" {
			t.Fatalf("send: %v", r)
		}
	}
	_, tok := m.n.register("")
	reader := m.n.dial(tok)
	reader.ok(map[string]any{"op": "join", "room": room})
	page := reader.ok(map[string]any{"op": "history", "room_id": room, "limit": 100})
	pageBytes, _ := json.Marshal(page)

	// The slow client: a tiny receive buffer, a dozen history pages asked for, nothing read.
	dialer := websocket.Dialer{NetDialContext: (&net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { setReceiveBuffer(fd, 4096) })
	}}).DialContext}
	conn, _, err := dialer.Dial("ws://"+m.n.addr+"/v1/ws?access_token="+tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const pages = 12
	for i := range pages {
		if err := conn.WriteJSON(map[string]any{"op": "history", "id": fmt.Sprintf("h%d", i), "room_id": room, "limit": 100}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second) // the node has read them all by now, unless it waits
	limit := maxQueuedBytes + 2*len(pageBytes)
	q := queuedBytes(m.n.srv, reader.user)
	t.Logf("%d bytes queued; pages of %d bytes", q, len(pageBytes))
	if q > limit {
		t.Fatalf("%d bytes queued for a client that reads nothing (pages of %d bytes); want at most %d", q, len(pageBytes), limit)
	}
	// Once it reads, it gets every answer, in order.
	if tc, ok := conn.UnderlyingConn().(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(1 << 20)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for next := 0; next < pages; {
		var f map[string]any
		if err := conn.ReadJSON(&f); err != nil {
			t.Fatalf("after %d answers: %v", next, err)
		}
		if f["op"] == "event" || f["op"] == "presence" || f["op"] == "typing" || f["op"] == "receipt" {
			continue
		}
		if f["op"] != "ok" || f["id"] != fmt.Sprintf("h%d", next) {
			t.Fatalf("answer %d: %v %v", next, f["op"], f["id"])
		}
		if events, _ := f["events"].([]any); len(events) != 100 {
			t.Fatalf("answer %d has %d events", next, len(events))
		}
		next++
	}
}

// The HTTP server had no write deadline: a client that asked for a large answer and never
// read it held the handler's goroutine and the socket's buffers for as long as it liked.
func TestHTTPAnswerToANonReaderIsCutOff(t *testing.T) {
	// Not parallel: it shortens the package's write deadline.
	if !canLimitSegment {
		t.Skip("needs TCP_MAXSEG: on loopback the node's send buffer takes the whole answer")
	}
	old := httpWriteTimeout.Load()
	httpWriteTimeout.Store(int64(500 * time.Millisecond))
	t.Cleanup(func() { httpWriteTimeout.Store(old) })
	n := startNode(t, nil)

	resp, err := http.Get(n.url("/app.js"))
	if err != nil {
		t.Fatal(err)
	}
	full, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(full) < 64<<10 {
		t.Fatalf("GET /app.js: %d, %d bytes; the test needs a large answer", resp.StatusCode, len(full))
	}

	// A small window and small segments: the node's side cannot buffer the whole answer.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { setReceiveBuffer(fd, 4096); setMaxSegment(fd, 536) })
	}}
	conn, err := d.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Eight requests in a row (HTTP/1.1 pipelining): more than the socket buffers of both
	// sides hold, so the node's handler must wait for the client to read.
	const asks = 8
	get := "GET /app.js HTTP/1.1\r\nHost: " + n.addr + "\r\n\r\n"
	last := "GET /app.js HTTP/1.1\r\nHost: " + n.addr + "\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, strings.Repeat(get, asks-1)+last); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // reads nothing, well past the deadline
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the node kept the connection open (%d bytes read)", len(got))
	}
	if c := bytes.Count(got, full); c == asks {
		t.Fatalf("all %d answers (%d bytes each) reached a client that did not read for 2 s", c, len(full))
	}
}

// The per-address limits counted IPv6 clients per address; a host is routinely given a /64,
// so it could register, guess logins and open connections without limit.
func TestIPv6AddressesCountPerSlash64(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.Limits.RegisterPerHour = 1; o.Limits.LoginPerMinute = 1 })
	h := n.srv.routes()
	post := func(path, from, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		r.RemoteAddr = from
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	reg := func(name string) string { return `{"username":"` + name + `","password":"12345678"}` }
	if w := post("/v1/register", "[2001:db8:1:2::1]:4000", reg("six1")); w.Code != 200 {
		t.Fatalf("first registration: %d %s", w.Code, w.Body)
	}
	if w := post("/v1/register", "[2001:db8:1:2:ffff:ffff:ffff:fffe]:4000", reg("six2")); w.Code != http.StatusTooManyRequests {
		t.Fatalf("a second registration from the same /64: %d %s, want 429", w.Code, w.Body)
	}
	if w := post("/v1/register", "[2001:db8:1:3::1]:4000", reg("six3")); w.Code != 200 {
		t.Fatalf("another /64: %d %s", w.Code, w.Body)
	}
	// IPv4 addresses, mapped or not, count on their own.
	if w := post("/v1/register", "[::ffff:192.0.2.7]:4000", reg("four1")); w.Code != 200 {
		t.Fatalf("an IPv4-mapped address: %d %s", w.Code, w.Body)
	}
	if w := post("/v1/register", "192.0.2.7:4000", reg("four2")); w.Code != http.StatusTooManyRequests {
		t.Fatalf("the same IPv4 address unmapped: %d %s, want 429", w.Code, w.Body)
	}
	if w := post("/v1/register", "192.0.2.8:4000", reg("four3")); w.Code != 200 {
		t.Fatalf("another IPv4 address: %d %s", w.Code, w.Body)
	}
	login := `{"username":"six1","password":"12345678"}`
	if w := post("/v1/login", "[2001:db8:5::1]:4000", login); w.Code != 200 {
		t.Fatalf("login: %d %s", w.Code, w.Body)
	}
	if w := post("/v1/login", "[2001:db8:5::2]:4000", `{"username":"six3","password":"12345678"}`); w.Code != http.StatusTooManyRequests {
		t.Fatalf("a second login from the same /64: %d %s, want 429", w.Code, w.Body)
	}
}

// The per-account login limiter kept a bucket for any username a client sent, up to the
// 64 KiB of a body, though no such account can exist.
func TestLoginLimiterKeepsNoMadeUpUsernames(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	for i := range 3 {
		name := strings.Repeat("X", 60000) + fmt.Sprint(i)
		status, out, _ := n.postFrom(fmt.Sprintf("127.0.0.%d", 41+i), "/v1/login", map[string]string{"username": name, "password": "whatever1"})
		wantHTTPError(t, "login", status, out, 403, "M_FORBIDDEN")
	}
	n.srv.loginAcct.mu.Lock()
	defer n.srv.loginAcct.mu.Unlock()
	for key := range n.srv.loginAcct.buckets {
		if len(key) > 64 {
			t.Fatalf("the per-account limiter keeps a %d-byte username", len(key))
		}
	}
}

// A message's content could nest 10,000 levels deep (canonical JSON's limit), so that every
// frame carrying it went past encoding/json's limit: Go clients (the harness's among them)
// could read neither its push nor any history page or sync answer holding it.
func TestDeeplyNestedContentIsRefused(t *testing.T) {
	t.Parallel()
	m := setup(t, nil)
	room := m.publicRoom(t, m.bob)
	deep := strings.Repeat("[", 9998) + strings.Repeat("]", 9998)
	frame := `{"op":"send","id":"deep","room_id":"` + room + `","txn_id":"deep","content":{"msgtype":"m.text","body":"hi","x":` + deep + `}}`
	ch := make(chan map[string]any, 1)
	m.alice.mu.Lock()
	m.alice.wait["deep"] = ch
	m.alice.mu.Unlock()
	if err := m.alice.conn.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		t.Fatal(err)
	}
	if r := <-ch; r["op"] != "error" || r["code"] != "M_INVALID_PARAM" {
		t.Fatalf("deep content: %v", r)
	}
	// The room's history still reads (a frame the harness cannot decode fails the test).
	m.alice.send(room, "after", "after")
	if events := m.bob.ok(map[string]any{"op": "history", "room_id": room})["events"].([]any); len(events) == 0 {
		t.Fatal("no history")
	}
}

// kick and unban looked at the target's membership before the caller's: an outsider told a
// private room's members (and its banned users) from everyone else by the refusal's message.
func TestOutsidersLearnNoMembershipFromKickOrUnban(t *testing.T) {
	t.Parallel()
	m := setup(t, nil)
	room := m.alice.createRoom(map[string]any{"invite": []string{m.bobID}})
	m.bob.ok(map[string]any{"op": "join", "room": room})
	waitMember(t, m.alice, room, m.bobID, "join")
	daveID, _ := m.n.register("")
	eveID, _ := m.n.register("")
	m.alice.ok(map[string]any{"op": "ban", "room_id": room, "user_id": eveID})
	waitMember(t, m.alice, room, eveID, "ban")

	answer := func(op, user string) string {
		r := m.carol.request(map[string]any{"op": op, "room_id": room, "user_id": user})
		if r["op"] != "error" || r["code"] != "M_FORBIDDEN" {
			t.Fatalf("%s %s by an outsider: %v", op, user, r)
		}
		return r["message"].(string)
	}
	for _, op := range []string{"kick", "ban", "unban"} {
		member, banned, stranger := answer(op, m.bobID), answer(op, eveID), answer(op, daveID)
		if member != stranger || banned != stranger {
			t.Errorf("%s: a member gets %q, a banned user %q, a stranger %q", op, member, banned, stranger)
		}
	}
}

// The unauthenticated connections were limited in total only (2,000 by default), and one
// address may hold 1,000 connections: a client with two addresses could take every slot, each
// for the 10 s an auth frame may take, and keep everyone else from connecting.
func TestUnauthenticatedSlotsPerAddress(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.Limits.MaxUnauthenticated = 40 }) // 2 per address
	_, tok := n.register("")
	dialFrom := func(ip string) *client {
		d := websocket.Dialer{NetDialContext: ipDialer(ip).DialContext}
		conn, _, err := d.Dial("ws://"+n.addr+"/v1/ws", nil)
		if err != nil {
			t.Fatalf("dial from %s: %v", ip, err)
		}
		return newClient(t, conn)
	}
	const ip = "127.0.0.51"
	for range 2 {
		dialFrom(ip)
	}
	deadline := time.Now().Add(10 * time.Second)
	for countOf(n.srv.unauthenticated, "") < 2 { // both hold their slots
		if time.Now().After(deadline) {
			t.Fatal("the connections never counted as unauthenticated")
		}
		time.Sleep(5 * time.Millisecond)
	}
	third := dialFrom(ip)
	wantLimitedOp(t, third.nextPush(nil))
	if code := waitClosed(t, third); code != websocket.CloseTryAgainLater {
		t.Fatalf("close code %d, want 1013", code)
	}
	// Another address is not held up, and its slot is given back once it authenticates.
	other := dialFrom("127.0.0.52")
	if m := other.request(map[string]any{"op": "auth", "token": tok}); m["op"] != "ok" {
		t.Fatalf("auth from another address: %v", m)
	}
	waitCount(t, n.srv.unauthenticated, "addr 127.0.0.52", 1)
}

// The API's JSON answers, errors that echo a path among them, carried no nosniff.
func TestAPIAnswersAreNotSniffed(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.Limits.RegisterPerHour = 1 })
	for _, path := range []string{"/v1/health", "/v1/<b>nothing</b>"} {
		resp, err := http.Get(n.url(path))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q", path, got)
		}
	}
	n.register("")
	_, _, h := n.postFrom("127.0.0.1", "/v1/register", map[string]string{"username": "again", "password": "12345678"})
	if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("a 429: X-Content-Type-Options %q", got)
	}
}

// Connecting was free: a user's first connection and the end of its last are presence
// changes, pushed to everyone sharing a room with them (and sent to the other nodes and
// orgs), so one user connecting and disconnecting in a loop flooded them all.
func TestReconnectLoopIsRateLimited(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.SendPerSecond = 1; o.SendBurst = 5 })
	_, tok := n.register("")
	start := time.Now()
	accepted, limited := 0, 0
	for range 20 {
		c := n.dialRaw(nil)
		r := c.request(map[string]any{"op": "auth", "token": tok})
		switch {
		case r["op"] == "ok":
			accepted++
		case r["code"] == "M_LIMIT_EXCEEDED":
			wantLimitedOp(t, r)
			if code := waitClosed(t, c); code != websocket.ClosePolicyViolation {
				t.Fatalf("close code %d, want 1008", code)
			}
			limited++
		default:
			t.Fatalf("auth: %v", r)
		}
		c.close()
	}
	if most := 5 + int(time.Since(start).Seconds()) + 1; accepted > most || limited == 0 {
		t.Fatalf("%d connections accepted, %d limited in %v; want at most %d accepted", accepted, limited, time.Since(start), most)
	}
	// The query-string token counts too (an accepted connection says nothing first).
	refused := 0
	for range 10 {
		conn, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		var f map[string]any
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		if conn.ReadJSON(&f) == nil && f["code"] == "M_LIMIT_EXCEEDED" {
			refused++
		}
		conn.Close()
	}
	if refused == 0 {
		t.Fatal("connections with the token in the URL were not limited")
	}
}
