package node

// Slowloris: clients that dribble a request byte by byte are cut off by the server's
// deadlines (HTTP header and read timeouts, WebSocket auth deadline) while everyone else is
// served.
// Each test takes about one deadline (10 s) and runs in parallel with the rest.

import (
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

const dribbleEvery = 150 * time.Millisecond

// servedMeanwhile checks, until stop closes, that a health request and a WebSocket ping are
// each answered quickly; it returns the slowest answer seen and how many rounds it made.
func servedMeanwhile(t *testing.T, n *testNode, c *client, stop <-chan struct{}) (time.Duration, int) {
	t.Helper()
	hc := &http.Client{Timeout: 3 * time.Second}
	var slowest time.Duration
	rounds := 0
	for {
		select {
		case <-stop:
			return slowest, rounds
		case <-time.After(500 * time.Millisecond):
		}
		start := time.Now()
		resp, err := hc.Get(n.url("/v1/health"))
		if err != nil {
			t.Errorf("health during the attack: %v", err)
			return slowest, rounds
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.ok(map[string]any{"op": "ping"})
		slowest = max(slowest, time.Since(start))
		rounds++
	}
}

// closedAfter reads conn until the server closes it and reports when that happened.
func closedAfter(conn net.Conn, start time.Time) <-chan time.Duration {
	ch := make(chan time.Duration, 1)
	go func() {
		_, _ = io.Copy(io.Discard, conn)
		ch <- time.Since(start)
	}()
	return ch
}

func TestSlowlorisHeadersAreCutOff(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tok := n.register("")
	c := n.dial(tok)
	timeout := n.srv.http.ReadHeaderTimeout
	if timeout <= 0 || timeout > 10*time.Second {
		t.Fatalf("ReadHeaderTimeout %v: want a header deadline of at most 10 s", timeout)
	}

	const attackers = 20
	start := time.Now()
	conns := make([]net.Conn, attackers)
	closed := make([]<-chan time.Duration, attackers)
	for i := range conns {
		conn, err := net.Dial("tcp", n.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns[i] = conn
		closed[i] = closedAfter(conn, start)
		path := "/v1/health"
		if i%2 == 1 {
			path = "/v1/ws"
		}
		if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	// Dribble a never-ending header, one byte per attacker per tick.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(dribbleEvery)
		defer tick.Stop()
		header := "X-Slow-" + strings.Repeat("a", 1000)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, conn := range conns {
				_, _ = conn.Write([]byte{header[i%len(header)]}) // fails once cut off
			}
		}
	}()
	// Wait for every attacker to be cut off (off the test goroutine), serving others meanwhile.
	limit := timeout + 4*time.Second
	cut := make([]time.Duration, attackers) // -1: still connected at the limit
	go func() {
		defer close(stop)
		for i, ch := range closed {
			select {
			case cut[i] = <-ch:
			case <-time.After(time.Until(start.Add(limit))):
				cut[i] = -1
			}
		}
	}()
	slowest, rounds := servedMeanwhile(t, n, c, stop)
	wg.Wait()
	for i, d := range cut {
		switch {
		case d < 0:
			t.Errorf("attacker %d still connected after %v", i, limit)
		case d < timeout-time.Second:
			t.Errorf("attacker %d cut off after %v, before the %v header timeout", i, d, timeout)
		}
	}
	if rounds < 5 || slowest > 2*time.Second {
		t.Errorf("others were served %d times during the attack, slowest %v", rounds, slowest)
	}
}

// wsAuthFrame is a masked client text frame carrying an auth request.
func wsAuthFrame(t *testing.T, token string) []byte {
	t.Helper()
	payload, _ := json.Marshal(map[string]any{"op": "auth", "id": "slow", "token": token})
	if len(payload) > 125 {
		t.Fatalf("auth frame of %d bytes needs a longer length field", len(payload))
	}
	mask := make([]byte, 4)
	_, _ = rand.Read(mask)
	frame := append([]byte{0x81, 0x80 | byte(len(payload))}, mask...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	return frame
}

func TestSlowlorisWebSocketAuthFrameIsCutOff(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tok := n.register("")
	c := n.dial(tok)

	// A valid auth frame, dribbled: it would be complete only well after the auth deadline.
	slow := n.dialRaw(nil)
	frame := wsAuthFrame(t, tok)
	if time.Duration(len(frame))*dribbleEvery < authTimeout+2*time.Second {
		t.Fatalf("a %d-byte frame at one byte per %v would beat the deadline", len(frame), dribbleEvery)
	}
	raw := slow.conn.NetConn()
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(dribbleEvery)
		defer tick.Stop()
		for _, b := range frame {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := raw.Write([]byte{b}); err != nil {
				return // cut off
			}
		}
	}()
	// Wait for the answer to the dribbler (off the test goroutine), serving others meanwhile.
	var m map[string]any
	var cutAt time.Duration
	go func() {
		defer close(stop)
		select {
		case m = <-slow.pushes:
			cutAt = time.Since(start)
		case <-time.After(authTimeout + 4*time.Second):
		}
	}()
	slowest, rounds := servedMeanwhile(t, n, c, stop)
	wg.Wait()
	if m == nil {
		t.Fatalf("the dribbling client is still connected after %v", time.Since(start))
	}
	if m["op"] != "error" || m["code"] != "M_MISSING_TOKEN" {
		t.Fatalf("the dribbling client got %v, want M_MISSING_TOKEN", m)
	}
	if code := waitClosed(t, slow); code != closeAuth {
		t.Fatalf("close code %d, want %d", code, closeAuth)
	}
	if cutAt < authTimeout-time.Second {
		t.Fatalf("cut off after %v, before the %v auth deadline", cutAt, authTimeout)
	}
	if rounds < 5 || slowest > 2*time.Second {
		t.Errorf("others were served %d times during the attack, slowest %v", rounds, slowest)
	}
}

// TestSlowlorisBodyIsCutOff dribbles a request body after complete headers: the header
// timeout does not cover the body, the server's ReadTimeout (headers and body) does.
func TestSlowlorisBodyIsCutOff(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	timeout := n.srv.http.ReadTimeout
	if timeout <= 0 || timeout > 10*time.Second {
		t.Fatalf("ReadTimeout %v: want a request deadline of at most 10 s", timeout)
	}
	conn, err := net.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	closed := closedAfter(conn, start)
	body := `{"username":"slow","password":"` + strings.Repeat("p", 200) + `"}`
	if _, err := io.WriteString(conn, "POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
		"Content-Length: "+itoa(len(body))+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(dribbleEvery)
		defer tick.Stop()
		for i := 0; i < len(body)-1; i++ { // never the last byte
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte{body[i]}); err != nil {
				return
			}
		}
	}()
	select {
	case d := <-closed:
		if d < timeout-time.Second {
			t.Fatalf("cut off after %v, before the %v read timeout", d, timeout)
		}
	case <-time.After(timeout + 3*time.Second):
		t.Fatalf("a request body dribbled after the headers was not cut off (still open after %v)", time.Since(start))
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }
