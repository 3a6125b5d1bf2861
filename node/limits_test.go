package node

// Every abuse limit of limits.go, tripped and recovered. Limits measured in minutes or hours
// recover in the unit tests of keyedLimiter (the type every one of them uses) with a short
// period; the per-second send limit and the connection counts recover in a running node.

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"
)

// fromIP is an HTTP client whose connections come from ip (any 127.x address is loopback).
func fromIP(t *testing.T, ip string) *http.Client {
	t.Helper()
	tr := &http.Transport{DialContext: ipDialer(ip).DialContext, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

func ipDialer(ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
}

// postFrom posts body from ip and returns the status, the decoded answer and the headers.
func (n *testNode) postFrom(ip, path string, body any) (int, map[string]any, http.Header) {
	n.t.Helper()
	b, _ := json.Marshal(body)
	resp, err := fromIP(n.t, ip).Post(n.url(path), "application/json", strings.NewReader(string(b)))
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return resp.StatusCode, out, resp.Header
}

// wantLimited checks an HTTP 429 M_LIMIT_EXCEEDED answer and returns its retry_after_ms.
func wantLimited(t *testing.T, what string, status int, out map[string]any, h http.Header) float64 {
	t.Helper()
	if status != http.StatusTooManyRequests || out["code"] != "M_LIMIT_EXCEEDED" {
		t.Fatalf("%s: got %d %v, want 429 M_LIMIT_EXCEEDED", what, status, out)
	}
	wait, _ := out["retry_after_ms"].(float64)
	if wait <= 0 {
		t.Fatalf("%s: retry_after_ms %v", what, out["retry_after_ms"])
	}
	if s, err := strconv.Atoi(h.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("%s: Retry-After %q", what, h.Get("Retry-After"))
	}
	return wait
}

// wantLimitedOp checks a WebSocket M_LIMIT_EXCEEDED answer and returns its retry_after_ms.
func wantLimitedOp(t *testing.T, m map[string]any) float64 {
	t.Helper()
	if m["op"] != "error" || m["code"] != "M_LIMIT_EXCEEDED" {
		t.Fatalf("got %v, want M_LIMIT_EXCEEDED", m)
	}
	wait, _ := m["retry_after_ms"].(float64)
	if wait <= 0 {
		t.Fatalf("retry_after_ms %v", m["retry_after_ms"])
	}
	return wait
}

// countOf reads a counter (white box) for waiting until the server let go of a connection.
func countOf(c *counter, key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

func waitCount(t *testing.T, c *counter, key string, below int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for countOf(c, key) >= below {
		if time.Now().After(deadline) {
			t.Fatalf("count of %q stays at %d", key, countOf(c, key))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// --- the limiter types ---------------------------------------------------------------------

func TestKeyedLimiterTripsAndRecovers(t *testing.T) {
	t.Parallel()
	const n, period = 2, 200 * time.Millisecond
	every := period / n
	k := newKeyedLimiter(n, period)
	for i := 0; i < n; i++ {
		if _, ok := k.allow("a"); !ok {
			t.Fatalf("attempt %d of the burst refused", i+1)
		}
	}
	wait, ok := k.allow("a")
	if ok || wait <= 0 || wait > every {
		t.Fatalf("past the burst: allow = %v, %v; want a refusal with 0 < wait <= %v", wait, ok, every)
	}
	// Refusals take nothing: hammering does not push recovery further out.
	for i := 0; i < 20; i++ {
		if w, ok := k.allow("a"); ok || w > every {
			t.Fatalf("hammering: allow = %v, %v", w, ok)
		}
	}
	if _, ok := k.allow("b"); !ok {
		t.Fatal("another key is limited too")
	}
	// Recovered after the wait it announced...
	time.Sleep(wait + 10*time.Millisecond)
	if _, ok := k.allow("a"); !ok {
		t.Fatal("still refused after retry_after")
	}
	// ...and the whole burst back after a full period.
	time.Sleep(period + 20*time.Millisecond)
	for i := 0; i < n; i++ {
		if _, ok := k.allow("a"); !ok {
			t.Fatalf("after a full period, attempt %d refused", i+1)
		}
	}

	// Idle buckets are forgotten (memory stays bounded): the sweep runs at most once a minute.
	for i := 0; i < 100; i++ {
		k.allow("idle" + strconv.Itoa(i))
	}
	time.Sleep(period + 20*time.Millisecond)
	k.mu.Lock()
	k.sweep = time.Time{}
	k.mu.Unlock()
	k.allow("fresh")
	k.mu.Lock()
	left := len(k.buckets)
	k.mu.Unlock()
	if left != 1 {
		t.Fatalf("%d buckets after sweeping, want 1", left)
	}
}

func TestKeyedLimiterPeriods(t *testing.T) {
	t.Parallel()
	// The node's limiters as configured: the wait they announce is about period/n.
	for _, tc := range []struct {
		n      int
		period time.Duration
	}{{10, time.Minute}, {30, time.Hour}, {60, time.Hour}, {600, time.Hour}} {
		k := newKeyedLimiter(tc.n, tc.period)
		for i := 0; i < tc.n; i++ {
			if _, ok := k.allow("x"); !ok {
				t.Fatalf("%d per %v: attempt %d refused", tc.n, tc.period, i+1)
			}
		}
		wait, ok := k.allow("x")
		every := tc.period / time.Duration(tc.n)
		if ok || wait <= every-time.Second || wait > every {
			t.Fatalf("%d per %v: wait %v, want about %v", tc.n, tc.period, wait, every)
		}
	}
}

// TestSlowRateBucketIsNotSweptInUse: a per-user write rate so slow that its refill time is
// past time.Duration's range (send_per_second is any float above 0) keeps its buckets. The
// refill time overflowed to a negative duration, so every sweep forgot every bucket, in use or
// not, and each user got a full burst again once a minute.
func TestSlowRateBucketIsNotSweptInUse(t *testing.T) {
	t.Parallel()
	k := newRateLimiter(rate.Limit(1e-10), 1) // one send, then one per 317 years
	if _, ok := k.allow("u"); !ok {
		t.Fatal("the burst refused")
	}
	if _, ok := k.allow("u"); ok {
		t.Fatal("past the burst: allowed")
	}
	k.mu.Lock()
	k.sweep = time.Time{} // the sweep is due
	k.mu.Unlock()
	if _, ok := k.allow("u"); ok {
		t.Fatal("allowed again after a sweep: the bucket in use was forgotten")
	}
}

func TestCounterAcquireRelease(t *testing.T) {
	t.Parallel()
	c := newCounter()
	for i := 0; i < 2; i++ {
		if !c.acquire("u", 2) {
			t.Fatalf("acquire %d under the max refused", i+1)
		}
	}
	if c.acquire("u", 2) {
		t.Fatal("third acquire allowed with max 2")
	}
	if !c.acquire("v", 2) {
		t.Fatal("another key is limited too")
	}
	c.release("u")
	if !c.acquire("u", 2) {
		t.Fatal("no room after a release")
	}
	if c.acquire("u", 2) {
		t.Fatal("over the max after release and acquire")
	}
	// Extra releases never go below zero (which would raise the limit).
	for i := 0; i < 5; i++ {
		c.release("u")
	}
	if countOf(c, "u") != 0 || len(c.n) != 1 {
		t.Fatalf("after extra releases: %v", c.n)
	}
	for i := 0; i < 2; i++ {
		if !c.acquire("u", 2) {
			t.Fatal("acquire refused after extra releases")
		}
	}
	if c.acquire("u", 2) {
		t.Fatal("extra releases raised the limit")
	}
}

// --- in a node ------------------------------------------------------------------------------

func TestSendPerSecondTripsAndRecovers(t *testing.T) {
	t.Parallel()
	m := setup(t, func(o *Options) { o.SendPerSecond = 5; o.SendBurst = 3 })
	room := m.alice.createRoom(map[string]any{"visibility": "public"})
	var got map[string]any
	for i := 0; i < 20 && got == nil; i++ {
		r := m.alice.request(map[string]any{"op": "send", "room_id": room, "txn_id": "s" + strconv.Itoa(i), "content": text("x")})
		if r["op"] == "error" {
			got = r
		}
	}
	if got == nil {
		t.Fatal("20 sends at once were all allowed with 5 per second, burst 3")
	}
	wait := wantLimitedOp(t, got)
	if wait > 200 {
		t.Fatalf("retry_after_ms %v, want at most 200 (one token at 5 per second)", wait)
	}
	m.bob.ok(map[string]any{"op": "join", "room": room}) // another user is not limited
	time.Sleep(time.Duration(wait)*time.Millisecond + 10*time.Millisecond)
	m.alice.send(room, "after", "recovered")
}

func TestConnsPerUserLimit(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.Limits.ConnsPerUser = 2 })
	user, tok := n.register("")
	_, other := n.register("")
	c1, c2 := n.dial(tok), n.dial(tok)
	c1.ok(map[string]any{"op": "ping"})
	c2.ok(map[string]any{"op": "ping"})

	// The third: its auth is answered M_LIMIT_EXCEEDED (never ok), then closed with 1008.
	third := n.dialRaw(nil)
	wantLimitedOp(t, third.request(map[string]any{"op": "auth", "token": tok}))
	if code := waitClosed(t, third); code != websocket.ClosePolicyViolation {
		t.Fatalf("close code %d, want 1008", code)
	}
	// The same through the query-string token.
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := newClient(t, conn)
	wantLimitedOp(t, q.nextPush(isError))
	if code := waitClosed(t, q); code != websocket.ClosePolicyViolation {
		t.Fatalf("query-string token: close code %d, want 1008", code)
	}
	n.dial(other).ok(map[string]any{"op": "ping"}) // another user is not limited
	c1.ok(map[string]any{"op": "ping"})            // the first two are unharmed

	// Closing one lets a new one in.
	c1.close()
	waitCount(t, n.srv.connsUser, user, 2)
	n.dial(tok).ok(map[string]any{"op": "ping"})
}

func TestConnsPerIPLimit(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.Limits.ConnsPerIP = 2 })
	_, tok := n.register("")
	c1, c2 := n.dial(tok), n.dial(tok)
	c2.ok(map[string]any{"op": "ping"})

	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws", nil)
	if err == nil {
		conn.Close()
		t.Fatal("a third connection from the address was upgraded")
	}
	if resp == nil {
		t.Fatalf("no answer: %v", err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	wantLimited(t, "third connection", resp.StatusCode, out, resp.Header)

	// Another address is not limited; plain HTTP from the limited one is not either.
	d := &websocket.Dialer{NetDialContext: ipDialer("127.0.0.2").DialContext, HandshakeTimeout: 10 * time.Second}
	conn, _, err = d.Dial("ws://"+n.addr+"/v1/ws", nil)
	if err != nil {
		t.Fatalf("another address: %v", err)
	}
	if m := newClient(t, conn).request(map[string]any{"op": "auth", "token": tok}); m["op"] != "ok" {
		t.Fatalf("auth from another address: %v", m)
	}
	if status, _ := n.get("/v1/health"); status != 200 {
		t.Fatalf("health from the limited address: %d", status)
	}

	c1.close()
	waitCount(t, n.srv.connsIP, "127.0.0.1", 2)
	n.dial(tok).ok(map[string]any{"op": "ping"})
}

func TestUnauthenticatedLimit(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.Limits.MaxUnauthenticated = 1 })
	_, tok := n.register("")
	first := n.dialRaw(nil)
	deadline := time.Now().Add(10 * time.Second)
	for countOf(n.srv.unauthenticated, "") < 1 { // the session has taken its slot
		if time.Now().After(deadline) {
			t.Fatal("the first connection never counted as unauthenticated")
		}
		time.Sleep(5 * time.Millisecond)
	}
	second := n.dialRaw(nil)
	wantLimitedOp(t, second.nextPush(nil))
	if code := waitClosed(t, second); code != websocket.CloseTryAgainLater {
		t.Fatalf("close code %d, want 1013", code)
	}
	// A query-string token skips the auth step, so it does not need a slot.
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	newClient(t, conn).ok(map[string]any{"op": "ping"})

	// Once the first authenticates, its slot is free.
	if m := first.request(map[string]any{"op": "auth", "token": tok}); m["op"] != "ok" {
		t.Fatalf("auth: %v", m)
	}
	waitCount(t, n.srv.unauthenticated, "", 1)
	n.dial(tok).ok(map[string]any{"op": "ping"})
}

func TestRoomsPerHourLimit(t *testing.T) {
	t.Parallel()
	m := setup(t, func(o *Options) { o.Limits.RoomsPerHour = 2 })
	room := m.alice.createRoom(map[string]any{"visibility": "public"})
	m.alice.createRoom(map[string]any{})
	got := m.alice.request(map[string]any{"op": "create_room", "name": "third"})
	if wait := wantLimitedOp(t, got); wait < float64((30*time.Minute - time.Minute).Milliseconds()) {
		t.Fatalf("retry_after_ms %v, want about half an hour", wait)
	}
	m.bob.createRoom(map[string]any{})               // another user is not limited
	m.alice.send(room, "t", "other writes still go") // nor are other ops
	for name, r := range roomsOf(m.alice) {
		if r["name"] == "third" {
			t.Fatalf("the refused room %s exists", name)
		}
	}
}

func TestJoinsPerHourLimit(t *testing.T) {
	t.Parallel()
	m := setup(t, func(o *Options) { o.Limits.JoinsPerHour = 2 })
	rooms := make([]string, 3)
	for i := range rooms {
		rooms[i] = m.alice.createRoom(map[string]any{"visibility": "public"})
	}
	m.bob.ok(map[string]any{"op": "join", "room": rooms[0]})
	m.bob.ok(map[string]any{"op": "join", "room": rooms[1]})
	if wait := wantLimitedOp(t, m.bob.request(map[string]any{"op": "join", "room": rooms[2]})); wait < float64((30*time.Minute - time.Minute).Milliseconds()) {
		t.Fatalf("retry_after_ms %v, want about half an hour", wait)
	}
	m.carol.ok(map[string]any{"op": "join", "room": rooms[2]}) // another user is not limited
	if _, in := roomsOf(m.bob)[rooms[2]]; in {
		t.Fatal("the refused join happened")
	}
}

func TestLoginLimits(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.Limits.LoginPerMinute = 3 })
	n.register("victim")
	n.register("walter")
	right := map[string]string{"username": "victim", "password": "correct horse"}
	wrong := map[string]string{"username": "victim", "password": "guess"}

	t.Run("per account", func(t *testing.T) {
		// Three wrong guesses from three addresses, each slowed down...
		for i, ip := range []string{"127.0.0.11", "127.0.0.12", "127.0.0.13"} {
			start := time.Now()
			status, out, _ := n.postFrom(ip, "/v1/login", wrong)
			wantHTTPError(t, "guess "+strconv.Itoa(i), status, out, 403, "M_FORBIDDEN")
			if d := time.Since(start); d < failedLoginDelay {
				t.Fatalf("a failed login answered in %v, before the %v delay", d, failedLoginDelay)
			}
		}
		// ...then the account is limited from any address, even with the right password.
		status, out, h := n.postFrom("127.0.0.14", "/v1/login", right)
		wait := wantLimited(t, "fourth attempt on the account", status, out, h)
		if wait > float64((20 * time.Second).Milliseconds()) {
			t.Fatalf("retry_after_ms %v, want at most 20 s (3 per minute)", wait)
		}
		if msg, _ := out["message"].(string); !strings.Contains(msg, "account") {
			t.Fatalf("message %q does not say which limit", msg)
		}
		// Another account from that address is not limited.
		status, out, _ = n.postFrom("127.0.0.14", "/v1/login", map[string]string{"username": "walter", "password": "correct horse"})
		if status != 200 {
			t.Fatalf("another account: %d %v", status, out)
		}
	})

	t.Run("per address", func(t *testing.T) {
		const ip = "127.0.0.21"
		for _, user := range []string{"w1", "w2", "w3"} { // (unknown users would cost a full bcrypt each)
			n.register(user)
			status, out, _ := n.postFrom(ip, "/v1/login", map[string]string{"username": user, "password": "wrong"})
			wantHTTPError(t, "login "+user, status, out, 403, "M_FORBIDDEN")
		}
		status, out, h := n.postFrom(ip, "/v1/login", map[string]string{"username": "walter", "password": "correct horse"})
		wantLimited(t, "fourth attempt from the address", status, out, h)
		if msg, _ := out["message"].(string); !strings.Contains(msg, "address") {
			t.Fatalf("message %q does not say which limit", msg)
		}
		status, out, _ = n.postFrom("127.0.0.22", "/v1/login", map[string]string{"username": "walter", "password": "correct horse"})
		if status != 200 {
			t.Fatalf("another address: %d %v", status, out)
		}
	})
}

func TestRegisterPerAddressLimit(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.Limits.RegisterPerHour = 2 })
	const ip = "127.0.0.31"
	for _, user := range []string{"reg1", "reg2"} {
		if status, out, _ := n.postFrom(ip, "/v1/register", map[string]string{"username": user, "password": "12345678"}); status != 200 {
			t.Fatalf("register %s: %d %v", user, status, out)
		}
	}
	status, out, h := n.postFrom(ip, "/v1/register", map[string]string{"username": "reg3", "password": "12345678"})
	if wait := wantLimited(t, "third registration", status, out, h); wait < float64((30*time.Minute - time.Minute).Milliseconds()) {
		t.Fatalf("retry_after_ms %v, want about half an hour", wait)
	}
	if _, ok := n.srv.cluster.Store().Account("@reg3:test.local"); ok {
		t.Fatal("the refused registration created the account")
	}
	if status, out, _ := n.postFrom("127.0.0.32", "/v1/register", map[string]string{"username": "reg3", "password": "12345678"}); status != 200 {
		t.Fatalf("another address: %d %v", status, out)
	}
}
