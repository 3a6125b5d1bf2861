package node

// Secrets never leak: passwords, tokens (good, bad and revoked), token hashes and password
// hashes stay out of the log (at debug level), the metrics, every error answer, and, in
// plain text, the node's data directory.

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parley-chat/parley/consensus"
	"golang.org/x/crypto/bcrypt"
)

// lockedBuffer is a log sink safe for the node's goroutines and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startNodeLogging is startNode with the node's log going to w at debug level (startNode
// always logs to the test at warn level).
func startNodeLogging(t *testing.T, w io.Writer) *testNode {
	t.Helper()
	n := &testNode{t: t, dataDir: t.TempDir(), raft: freeAddr(t)}
	n.opts = Options{Org: "test.local", RegistrationOpen: true, PasswordCost: bcrypt.MinCost,
		SendPerSecond: 1000, SendBurst: 1000}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = ln.Addr().String()
	opts := n.opts
	opts.PublicURL = "http://" + n.addr
	opts.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := New(opts, consensus.Options{NodeID: "node1", DataDir: n.dataDir, RaftBind: n.raft, Bootstrap: true,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	n.srv, n.done = srv, make(chan error, 1)
	go func() { n.done <- srv.Serve(ln) }()
	t.Cleanup(n.stop)
	deadline := time.Now().Add(10 * time.Second)
	for !srv.cluster.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("node did not become leader")
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
	return n
}

func TestSecretsStayOutOfLogsMetricsAndErrors(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	n := startNodeLogging(t, &logs)

	const (
		password    = "Tr0ub4dor&3-correct-horse-battery"
		wrongPass   = "wrong-password-Zebra-77"
		ghostPass   = "ghost-password-Quokka-19"
		dupPass     = "another-secret-pw-Walrus-42"
		weakPass    = "Sh0rt!7"
		badToken    = "bad-token-Q9f8s7d6f5g4h3j2k1"
		badQuery    = "bad-query-token-Zx81Yw72Vu63"
		badBearer   = "bad-bearer-token-Mn45Op67Qr89"
		inFrame     = "frame-secret-Lk12Jh34Gf56"
		longPassTag = "long-password-Ostrich-"
	)
	var errorsSeen []string // every error answer, HTTP or WebSocket
	httpDo := func(method, path, token, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, n.url(path), strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			errorsSeen = append(errorsSeen, string(data))
		}
		return resp.StatusCode, string(data)
	}
	tokenOf := func(body string) string {
		i := strings.Index(body, `"access_token":"`)
		if i < 0 {
			t.Fatalf("no token in %s", body)
		}
		rest := body[i+len(`"access_token":"`):]
		return rest[:strings.IndexByte(rest, '"')]
	}
	wsErr := func(m map[string]any) {
		if m["op"] == "error" {
			errorsSeen = append(errorsSeen, mustJSON(t, m))
		}
	}

	// HTTP: register, login right and wrong, refusals that carry a password.
	status, body := httpDo("POST", "/v1/register", "", `{"username":"sam","password":"`+password+`"}`)
	if status != 200 {
		t.Fatalf("register: %d %s", status, body)
	}
	tok1 := tokenOf(body)
	status, body = httpDo("POST", "/v1/login", "", `{"username":"sam","password":"`+password+`"}`)
	if status != 200 {
		t.Fatalf("login: %d %s", status, body)
	}
	tok2 := tokenOf(body)
	for _, req := range []struct{ path, body string }{
		{"/v1/login", `{"username":"sam","password":"` + wrongPass + `"}`},
		{"/v1/login", `{"username":"ghost","password":"` + ghostPass + `"}`},
		{"/v1/login", `{"username":"sam","password":"` + wrongPass + `"`}, // not JSON
		{"/v1/login", `{"username":"` + wrongPass + `","password":5}`},    // wrong type
		{"/v1/register", `{"username":"sam","password":"` + dupPass + `"}`},
		{"/v1/register", `{"username":"weak","password":"` + weakPass + `"}`},
		{"/v1/register", `{"username":"long","password":"` + longPassTag + strings.Repeat("o", 1100) + `"}`},
		{"/v1/register", `{"username":"Bad Name ` + dupPass + `","password":"` + dupPass + `"}`},
	} {
		if status, body := httpDo("POST", req.path, "", req.body); status == 200 {
			t.Fatalf("POST %s %s succeeded: %s", req.path, req.body, body)
		}
	}

	// WebSocket: good and bad tokens in the auth frame and in the query string, then ops.
	c := n.dial(tok1)
	room := c.createRoom(map[string]any{"name": "r"})
	c.send(room, "t1", "hello")
	for _, frame := range []map[string]any{
		{"op": "auth", "token": tok2}, // already authenticated
		{"op": "join", "room": "!x:other.test"},
		{"op": "send", "room_id": room, "txn_id": "t2", "content": map[string]any{"msgtype": "m.bogus", "body": tok1}},
		{"op": "history", "room_id": room, "before": tok1},
		{"op": "sync", "since": tok2},
	} {
		wsErr(c.request(frame))
	}
	writeRaw(t, c, websocket.TextMessage, []byte(`{"op":"ping","id":"`+inFrame+`" `+tok1)) // not JSON
	wsErr(c.nextPush(isError))
	for _, tok := range []string{badToken, tok1 + "x", ""} {
		raw := n.dialRaw(nil)
		writeFrame(t, raw, map[string]any{"op": "auth", "id": "a", "token": tok})
		wsErr(raw.nextPush(nil))
		waitClosed(t, raw)
	}
	raw := n.dialRaw(nil)
	writeFrame(t, raw, map[string]any{"op": "ping", "id": "p", "token": tok1}) // a token, but not an auth frame
	wsErr(raw.nextPush(nil))
	waitClosed(t, raw)
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+tok2, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := newClient(t, conn)
	q.ok(map[string]any{"op": "ping"})
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+badQuery, nil)
	if err == nil || resp == nil {
		t.Fatalf("a bad query token was upgraded: %v", err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	errorsSeen = append(errorsSeen, string(data))
	// A frame over the limit carrying a secret: closed with 1009 (and logged).
	big := n.dial(tok1)
	// (The node may close while the frame is still being written: a write error is expected.)
	_ = big.conn.WriteMessage(websocket.TextMessage, []byte(`{"op":"ping","pad":"`+strings.Repeat(password, 3000)+`"}`))
	waitClosed(t, big)

	// Logout: the token stops working; refusals of it and of a bad bearer.
	if status, body := httpDo("POST", "/v1/logout", tok2, ``); status != 200 {
		t.Fatalf("logout: %d %s", status, body)
	}
	waitClosed(t, q)
	httpDo("POST", "/v1/logout", tok2, ``)
	httpDo("POST", "/v1/logout", badBearer, ``)
	raw = n.dialRaw(nil)
	writeFrame(t, raw, map[string]any{"op": "auth", "id": "a", "token": tok2})
	wsErr(raw.nextPush(nil))
	waitClosed(t, raw)

	_, metricsBody := n.get("/metrics")

	acc, ok := n.srv.cluster.Store().Account("@sam:test.local")
	if !ok {
		t.Fatal("no account")
	}
	secrets := map[string]string{
		"password": password, "wrong password": wrongPass, "unknown user's password": ghostPass,
		"refused registration's password": dupPass, "weak password": weakPass, "long password": longPassTag,
		"registration token": tok1, "login token": tok2, "bad auth token": badToken, "bad query token": badQuery,
		"bad bearer token": badBearer, "frame secret": inFrame,
		"registration token hash": hashToken(tok1), "login token hash": hashToken(tok2), "bad token hash": hashToken(badToken),
		"password pre-hash": string(passwordKey(password)), "password hash": string(acc.PasswordHash),
		"password hash, base64": base64.StdEncoding.EncodeToString(acc.PasswordHash), // how JSON stores []byte
	}
	// Tokens also not in part: a log line that prints a prefix is a leak too.
	for name, tok := range map[string]string{"registration token": tok1, "login token": tok2} {
		secrets[name+" prefix"] = tok[:12]
	}
	if len(errorsSeen) < 20 {
		t.Fatalf("only %d error answers collected: %q", len(errorsSeen), errorsSeen)
	}
	logText := logs.String()
	if !strings.Contains(logText, "level=") {
		t.Fatal("nothing was logged: the check would prove nothing")
	}
	for where, text := range map[string]string{"log": logText, "metrics": metricsBody, "error answers": strings.Join(errorsSeen, "\n")} {
		for name, secret := range secrets {
			if i := strings.Index(text, secret); i >= 0 {
				t.Errorf("%s holds the %s: …%s…", where, name, text[max(i-200, 0):min(i+len(secret)+50, len(text))])
			}
		}
	}

	// At rest: the data directory holds the token hashes, never the tokens or the password.
	stored := map[string]bool{}
	err = filepath.WalkDir(n.dataDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for name, secret := range secrets {
			if bytes.Contains(b, []byte(secret)) {
				stored[name] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !stored["registration token hash"] || !stored["password hash, base64"] {
		t.Fatalf("the data directory does not hold the token and password hashes in the clear (%v): "+
			"the at-rest check would prove nothing", stored)
	}
	for _, name := range []string{"password", "wrong password", "registration token", "login token",
		"registration token prefix", "login token prefix", "password pre-hash", "bad auth token"} {
		if stored[name] {
			t.Errorf("the data directory holds the %s", name)
		}
	}
	if _, err := bcrypt.Cost(acc.PasswordHash); err != nil {
		t.Errorf("the stored password hash is not bcrypt: %v", err)
	}
}
