package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// postRaw posts a raw body and returns the status and decoded JSON answer.
func (n *testNode) postRaw(path string, body []byte) (int, map[string]any) {
	n.t.Helper()
	resp, err := http.Post(n.url(path), "application/json", bytes.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		n.t.Fatalf("POST %s: %d answered non-JSON %q", path, resp.StatusCode, data)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		n.t.Fatalf("POST %s: Content-Type %q", path, ct)
	}
	return resp.StatusCode, out
}

func (n *testNode) get(path string) (int, string) {
	n.t.Helper()
	resp, err := http.Get(n.url(path))
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// wantHTTPError checks an error answer of the HTTP API.
func wantHTTPError(t *testing.T, what string, status int, out map[string]any, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || out["code"] != wantCode {
		t.Fatalf("%s: got %d %v, want %d %s", what, status, out, wantStatus, wantCode)
	}
	if msg, _ := out["message"].(string); msg == "" {
		t.Fatalf("%s: error without a message: %v", what, out)
	}
}

// waitClosed waits until the server closes c and returns the close code it sent.
func waitClosed(t *testing.T, c *client) int {
	t.Helper()
	select {
	case <-c.closed:
		return int(c.closeCode.Load())
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not close the connection")
		return 0
	}
}

func TestRegister(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	code, out := n.post("/v1/register", map[string]string{"username": "carol", "password": "12345678"}, "")
	if code != 200 || out["user_id"] != "@carol:test.local" {
		t.Fatalf("register: %d %v", code, out)
	}
	tok, _ := out["access_token"].(string)
	if len(tok) < 22 { // 128 bits in unpadded base64
		t.Fatalf("token %q is too short", tok)
	}
	if c := n.dial(tok); c.user != "@carol:test.local" {
		t.Fatalf("the new token authenticates %q", c.user)
	}

	tests := []struct {
		name     string
		body     any
		status   int
		code     string
		username string
	}{
		{"taken", map[string]string{"username": "carol", "password": "other password"}, 409, "M_USER_IN_USE", ""},
		{"upper case", map[string]string{"username": "Dave", "password": "12345678"}, 400, "M_INVALID_USERNAME", ""},
		{"empty", map[string]string{"username": "", "password": "12345678"}, 400, "M_INVALID_USERNAME", ""},
		{"space", map[string]string{"username": "da ve", "password": "12345678"}, 400, "M_INVALID_USERNAME", ""},
		{"colon", map[string]string{"username": "dave:test.local", "password": "12345678"}, 400, "M_INVALID_USERNAME", ""},
		{"sigil", map[string]string{"username": "@dave", "password": "12345678"}, 400, "M_INVALID_USERNAME", ""},
		{"65 characters", map[string]string{"username": strings.Repeat("d", 65), "password": "12345678"}, 400, "M_INVALID_USERNAME", ""},
		{"64 characters", map[string]string{"username": strings.Repeat("d", 64), "password": "12345678"}, 200, "", strings.Repeat("d", 64)},
		{"all allowed characters", map[string]string{"username": "a.b_c=d-9", "password": "12345678"}, 200, "", "a.b_c=d-9"},
		{"7 characters", map[string]string{"username": "erin", "password": "1234567"}, 400, "M_WEAK_PASSWORD", ""},
		{"no password", map[string]string{"username": "erin"}, 400, "M_WEAK_PASSWORD", ""},
		{"8 characters of 2 bytes", map[string]string{"username": "frank", "password": "éééééééé"}, 200, "", "frank"},
		{"7 characters of 2 bytes", map[string]string{"username": "gina", "password": "ééééééé"}, 400, "M_WEAK_PASSWORD", ""},
		{"username a number", map[string]any{"username": 5, "password": "12345678"}, 400, "M_BAD_JSON", ""},
		{"array body", []string{"harry", "12345678"}, 400, "M_BAD_JSON", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, out := n.post("/v1/register", tc.body, "")
			if tc.code != "" {
				wantHTTPError(t, tc.name, status, out, tc.status, tc.code)
				return
			}
			if status != 200 || out["user_id"] != "@"+tc.username+":test.local" || out["access_token"] == "" {
				t.Fatalf("got %d %v", status, out)
			}
		})
	}

	t.Run("not JSON", func(t *testing.T) {
		status, out := n.postRaw("/v1/register", []byte(`{"username":"ivy",`))
		wantHTTPError(t, "not JSON", status, out, 400, "M_BAD_JSON")
	})
	t.Run("not UTF-8", func(t *testing.T) {
		// Read leniently, each bad byte became U+FFFD: "pass\xfe…" then logged in as "pass\xff…".
		status, out := n.postRaw("/v1/register", []byte("{\"username\":\"ivy\",\"password\":\"12345678\xff\"}"))
		wantHTTPError(t, "not UTF-8", status, out, 400, "M_BAD_JSON")
		if _, ok := n.srv.cluster.Store().Account("@ivy:test.local"); ok {
			t.Fatal("the body that is no JSON created the account")
		}
	})
	t.Run("body over 64 KiB", func(t *testing.T) {
		body := []byte(`{"username":"jack","password":"` + strings.Repeat("p", 70<<10) + `"}`)
		status, out := n.postRaw("/v1/register", body)
		wantHTTPError(t, "big body", status, out, 413, "M_TOO_LARGE")
		if _, ok := n.srv.cluster.Store().Account("@jack:test.local"); ok {
			t.Fatal("the oversized request created the account")
		}
	})
}

func TestRegistrationClosed(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.RegistrationOpen = false })
	status, out := n.post("/v1/register", map[string]string{"username": "mallory", "password": "12345678"}, "")
	wantHTTPError(t, "closed registration", status, out, 403, "M_FORBIDDEN")
	// Closed means closed, whatever the body.
	status, out = n.postRaw("/v1/register", []byte(`nonsense`))
	wantHTTPError(t, "closed registration, bad body", status, out, 403, "M_FORBIDDEN")
	if _, ok := n.srv.cluster.Store().Account("@mallory:test.local"); ok {
		t.Fatal("an account was created")
	}
}

func TestLoginLogout(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	user, regTok := n.register("")
	local := strings.TrimSuffix(strings.TrimPrefix(user, "@"), ":test.local")

	status, out := n.post("/v1/login", map[string]string{"username": local, "password": "correct horse"}, "")
	if status != 200 || out["user_id"] != user {
		t.Fatalf("login: %d %v", status, out)
	}
	loginTok := out["access_token"].(string)
	if loginTok == regTok {
		t.Fatal("login returned the registration token")
	}

	// Unknown user and wrong password get the same answer.
	var answers []map[string]any
	for _, creds := range []map[string]string{
		{"username": local, "password": "wrong horse"},
		{"username": "nobody-here", "password": "correct horse"},
		{"username": strings.ToUpper(local), "password": "correct horse"},
		{"username": local},
	} {
		status, out := n.post("/v1/login", creds, "")
		wantHTTPError(t, "login "+creds["username"], status, out, 403, "M_FORBIDDEN")
		answers = append(answers, out)
	}
	for _, a := range answers[1:] {
		if a["message"] != answers[0]["message"] {
			t.Fatalf("login refusals differ: %v vs %v", a, answers[0])
		}
	}
	status, out = n.postRaw("/v1/login", []byte(`{`))
	wantHTTPError(t, "login bad JSON", status, out, 400, "M_BAD_JSON")

	// Both tokens work; an open session on the login token is cut when it is logged out.
	open := n.dial(loginTok)
	qconn, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+loginTok, nil)
	if err != nil {
		t.Fatal(err)
	}
	openQuery := newClient(t, qconn)
	openQuery.ok(map[string]any{"op": "ping"})
	other := n.dial(regTok)
	status, out = n.post("/v1/logout", nil, loginTok)
	if status != 200 || len(out) != 0 {
		t.Fatalf("logout: %d %v", status, out)
	}
	for _, c := range []*client{open, openQuery} {
		if code := waitClosed(t, c); code != 4001 {
			t.Fatalf("open session closed with %d, want 4001", code)
		}
	}
	other.ok(map[string]any{"op": "ping"}) // the user's other token still works

	// The token no longer authenticates: auth frame, query string, logout.
	c := n.dialRaw(nil)
	writeFrame(t, c, map[string]any{"op": "auth", "id": "a1", "token": loginTok})
	if m := c.nextPush(nil); m["op"] != "error" || m["code"] != "M_UNKNOWN_TOKEN" || m["id"] != "a1" {
		t.Fatalf("auth with a revoked token: %v", m)
	}
	if code := waitClosed(t, c); code != 4001 {
		t.Fatalf("close code %d, want 4001", code)
	}
	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+loginTok, nil)
	if err == nil {
		conn.Close()
		t.Fatal("the revoked token opened a WebSocket")
	}
	if resp == nil || resp.StatusCode != 401 {
		t.Fatalf("upgrade with a revoked token: %v %v", resp, err)
	}
	status, out = n.post("/v1/logout", nil, loginTok)
	wantHTTPError(t, "second logout", status, out, 401, "M_UNKNOWN_TOKEN")
	status, out = n.post("/v1/logout", nil, "")
	wantHTTPError(t, "logout without a token", status, out, 401, "M_UNKNOWN_TOKEN")
	status, out = n.post("/v1/logout", nil, "not-a-token")
	wantHTTPError(t, "logout with a bad token", status, out, 401, "M_UNKNOWN_TOKEN")
}

func TestHealthAndMetrics(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tok := n.register("")
	c := n.dial(tok)
	c.ok(map[string]any{"op": "ping"})

	status, body := n.get("/v1/health")
	var h map[string]string
	if err := json.Unmarshal([]byte(body), &h); err != nil || status != 200 {
		t.Fatalf("health: %d %q", status, body)
	}
	if h["status"] != "ok" || h["role"] != "leader" || h["org"] != "test.local" || h["node_id"] != "node1" || h["leader"] != "node1" {
		t.Fatalf("health: %v", h)
	}

	status, body = n.get("/metrics")
	if status != 200 {
		t.Fatalf("metrics: %d", status)
	}
	for _, want := range []string{"\nparley_ws_connections 1\n", "process_resident_memory_bytes", "parley_ws_frames_in_total"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestQueryStringToken(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	user, tok := n.register("")

	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+tok, nil)
	if err != nil {
		t.Fatalf("dial with a good token: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c := newClient(t, conn)
	c.ok(map[string]any{"op": "ping"}) // no auth frame needed
	c.fails("M_INVALID_PARAM", map[string]any{"op": "auth", "token": tok})
	room := c.createRoom(map[string]any{})
	if ev := c.nextEvent(room, "m.room.member"); ev["sender"] != user {
		t.Fatalf("the session acts as %v, want %s", ev["sender"], user)
	}

	for _, bad := range []string{"nope", tok + "x"} {
		conn, resp, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+bad, nil)
		if err == nil {
			conn.Close()
			t.Fatalf("token %q opened a WebSocket", bad)
		}
		if resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("token %q: %v %v", bad, resp, err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var out map[string]any
		if json.Unmarshal(data, &out) != nil || out["code"] != "M_UNKNOWN_TOKEN" {
			t.Fatalf("token %q: body %q", bad, data)
		}
	}
}

func TestOrigin(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.AllowedOrigins = []string{"https://chat.example/"} })
	_, tok := n.register("")
	port := n.addr[strings.LastIndexByte(n.addr, ':')+1:]
	tests := []struct {
		origin string
		ok     bool
	}{
		{"", true},
		{"http://127.0.0.1:" + port, true},
		{"http://localhost:" + port, true},
		{"https://chat.example", true},
		{"http://evil.example", false},
		{"null", false},
		{"http://127.0.0.1:1", false},
		{"https://127.0.0.1:" + port, false},
		{"http://127.0.0.1:" + port + ".evil.example", false},
		{"https://chat.example.evil.example", false},
	}
	for _, tc := range tests {
		t.Run(tc.origin, func(t *testing.T) {
			h := http.Header{}
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			conn, resp, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws", h)
			if !tc.ok {
				if err == nil {
					conn.Close()
					t.Fatal("upgrade allowed")
				}
				if resp == nil || resp.StatusCode != http.StatusForbidden {
					t.Fatalf("want 403, got %v %v", resp, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("upgrade refused: %v", err)
			}
			c := newClient(t, conn)
			if m := c.request(map[string]any{"op": "auth", "token": tok}); m["op"] != "ok" {
				t.Fatalf("auth: %v", m)
			}
			c.ok(map[string]any{"op": "ping"})
		})
	}
}

// The loopback origins follow http.listen, not http.public_url; origins compare as RFC 6454
// says (scheme and host in any case, a default port written or not).
func TestOriginRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		listen, public string
		allowed        []string
		refused        []string
	}{
		{"loopback listen, other public URL", "127.0.0.1:8080", "https://chat.example",
			[]string{"http://localhost:8080", "http://127.0.0.1:8080", "https://chat.example", "HTTPS://Chat.Example:443", "http://LOCALHOST:8080"},
			[]string{"http://[::1]:8080", "https://localhost:8080", "http://localhost:8081", "https://chat.example:8443", "http://chat.example"}},
		{"all interfaces", "0.0.0.0:8080", "https://chat.example:443/",
			[]string{"https://chat.example"},
			[]string{"http://localhost:8080", "http://127.0.0.1:8080"}},
		{"all interfaces, public URL derived as localhost", ":8080", "http://localhost:8080",
			[]string{"http://localhost:8080", "http://localhost:80" + "80"},
			[]string{"http://127.0.0.1:8080"}},
		{"IPv6 loopback", "[::1]:9000", "http://[::1]:9000",
			[]string{"http://[::1]:9000", "http://localhost:9000", "http://127.0.0.1:9000"},
			[]string{"http://[::1]:9001"}},
		{"default port", "10.0.0.1:80", "http://chat.example:80",
			[]string{"http://chat.example", "http://chat.example:80"},
			[]string{"http://localhost:80", "https://chat.example", "null", "http://chat.example/path", "http://u@chat.example"}},
	}
	for _, tc := range tests {
		srv := &Server{origins: allowedOrigins(Options{Listen: tc.listen, PublicURL: tc.public, AllowedOrigins: []string{"https://App.example/"}})}
		check := func(origin string, want bool) {
			r, _ := http.NewRequest(http.MethodGet, "http://x/v1/ws", nil)
			r.Header.Set("Origin", origin)
			if got := srv.checkOrigin(r); got != want {
				t.Errorf("%s: origin %q allowed %v, want %v (set %v)", tc.name, origin, got, want, srv.origins)
			}
		}
		for _, o := range append(tc.allowed, "https://app.example") {
			check(o, true)
		}
		for _, o := range tc.refused {
			check(o, false)
		}
	}
}

// A node whose public URL is not on loopback still allows the loopback origins of its
// loopback listen address, and one listening on all interfaces does not.
func TestOriginFollowsListen(t *testing.T) {
	t.Parallel()
	dial := func(n *testNode, origin string) int {
		h := http.Header{}
		h.Set("Origin", origin)
		conn, resp, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws", h)
		if err == nil {
			conn.Close()
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("origin %s: %v", origin, err)
		}
		return resp.StatusCode
	}
	n := startNode(t, func(o *Options) { o.PublicURL = "https://chat.example" })
	port := n.addr[strings.LastIndexByte(n.addr, ':')+1:]
	for _, origin := range []string{"http://localhost:" + port, "http://127.0.0.1:" + port, "https://chat.example"} {
		if code := dial(n, origin); code != http.StatusSwitchingProtocols {
			t.Errorf("listen %s, origin %s: %d, want the upgrade", n.addr, origin, code)
		}
	}
	n.opts.Listen = "0.0.0.0:" + port
	n.restart()
	for _, origin := range []string{"http://localhost:" + port, "http://127.0.0.1:" + port} {
		if code := dial(n, origin); code != http.StatusForbidden {
			t.Errorf("listen 0.0.0.0:%s, origin %s: %d, want 403", port, origin, code)
		}
	}
	if code := dial(n, "https://chat.example"); code != http.StatusSwitchingProtocols {
		t.Errorf("public URL origin: %d, want the upgrade", code)
	}
}

// Requests no route takes answer the contract's JSON errors, not net/http's plain text.
func TestUnroutedRequestsAnswerJSON(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	tests := []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{"GET", "/v1/nope", http.StatusNotFound, "M_NOT_FOUND", ""},
		{"POST", "/v1/nope", http.StatusNotFound, "M_NOT_FOUND", ""},
		{"POST", "/v1/health", http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "GET, HEAD"},
		{"DELETE", "/v1/register", http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "POST"},
		{"GET", "/v1/register", http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "POST"},
		{"POST", "/", http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "GET, HEAD"},
		{"GET", "/v1/ws", http.StatusBadRequest, "M_UNRECOGNIZED", ""},
	}
	for _, tc := range tests {
		req, _ := http.NewRequest(tc.method, n.url(tc.path), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var out map[string]any
		if err := json.Unmarshal(data, &out); err != nil || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Errorf("%s %s: %d %q (Content-Type %q), want JSON", tc.method, tc.path, resp.StatusCode, data, resp.Header.Get("Content-Type"))
			continue
		}
		wantHTTPError(t, tc.method+" "+tc.path, resp.StatusCode, out, tc.status, tc.code)
		if tc.allow != "" && resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, resp.Header.Get("Allow"), tc.allow)
		}
	}
	// The routes themselves are unchanged.
	if code, body := n.get("/"); code != http.StatusOK || !strings.Contains(body, "<") {
		t.Errorf("GET /: %d", code)
	}
	if code, _ := n.get("/v1/health"); code != http.StatusOK {
		t.Errorf("GET /v1/health: %d", code)
	}
}

// A node without cluster.secret refuses to add a voter: Raft traffic would be guarded by a
// proof anyone can compute.
func TestClusterJoinNeedsSecret(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	status, out := n.post("/v1/cluster/join", map[string]string{"node_id": "node2", "raft_addr": "127.0.0.1:1"}, "")
	wantHTTPError(t, "join without a secret", status, out, http.StatusForbidden, "M_FORBIDDEN")
	if msg, _ := out["message"].(string); !strings.Contains(msg, "cluster.secret") {
		t.Errorf("message %q does not name cluster.secret", msg)
	}
	st, err := n.srv.cluster.Status()
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(st); strings.Contains(string(b), "node2") {
		t.Fatalf("node2 was added: %s", b)
	}
}

// A node id the configuration could not hold (cluster.node_id's rule) is refused before the
// membership changes: it would sit there, and print into an operator's terminal, as given.
func TestClusterJoinChecksTheNodeID(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	for _, id := range []string{"n2\tforged row", "n2\x1b[2J", "n 2", strings.Repeat("n", 65), "nö"} {
		status, out := n.post("/v1/cluster/join", map[string]string{"node_id": id, "raft_addr": "127.0.0.1:1"}, "")
		wantHTTPError(t, fmt.Sprintf("join as %q", id), status, out, http.StatusBadRequest, "M_INVALID_PARAM")
	}
}
