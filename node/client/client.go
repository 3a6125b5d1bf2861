// Package client is a small Go client of the Parley client protocol (HTTP + WebSocket), used
// by system tests, the example bridge tooling and anyone scripting a node.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Frame is one JSON frame of the protocol.
type Frame = map[string]any

// Error is an error reply.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Register creates an account on the node at base (e.g. "http://127.0.0.1:8080").
func Register(ctx context.Context, base, username, password string) (userID, token string, err error) {
	return credentials(ctx, base+"/v1/register", username, password)
}

// Login logs in to an account.
func Login(ctx context.Context, base, username, password string) (userID, token string, err error) {
	return credentials(ctx, base+"/v1/login", username, password)
}

func credentials(ctx context.Context, url, username, password string) (string, string, error) {
	body, _ := json.Marshal(map[string]string{"username": username, "password": password})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out struct {
		UserID  string `json:"user_id"`
		Token   string `json:"access_token"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return "", "", fmt.Errorf("%s: %s", resp.Status, data)
	}
	if resp.StatusCode != http.StatusOK {
		return "", "", &Error{Code: out.Code, Message: out.Message}
	}
	return out.UserID, out.Token, nil
}

// Conn is an authenticated WebSocket connection. Replies are matched to requests by id;
// everything else arrives on Pushes.
type Conn struct {
	UserID string
	ws     *websocket.Conn
	seq    atomic.Int64
	wmu    sync.Mutex
	mu     sync.Mutex
	wait   map[string]chan Frame
	pushes chan Frame
	done   chan struct{}
	quit   chan struct{} // closed by Close: unblocks a reader waiting on a full Pushes
	once   sync.Once
	err    error
	// CloseCode is the close code the node sent, once closed (0 if none).
	CloseCode atomic.Int64
}

// Dial connects to wsURL (e.g. "ws://127.0.0.1:8080/v1/ws") and authenticates with token.
// Up to pushBuffer pushes are buffered; beyond that the reader blocks, as a slow client would.
func Dial(ctx context.Context, wsURL, token string, pushBuffer int) (*Conn, error) {
	ws, _, err := websocket.DefaultDialer.DialContext(ctx, wsURL, nil)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", wsURL, err)
	}
	c := &Conn{ws: ws, wait: map[string]chan Frame{}, pushes: make(chan Frame, pushBuffer),
		done: make(chan struct{}), quit: make(chan struct{})}
	go c.read()
	reply, err := c.Request(ctx, Frame{"op": "auth", "token": token})
	if err != nil {
		c.Close()
		return nil, err
	}
	c.UserID, _ = reply["user_id"].(string)
	return c, nil
}

// Pushes delivers events and ephemeral pushes in arrival order; it is closed when the
// connection ends.
func (c *Conn) Pushes() <-chan Frame { return c.pushes }

// Done is closed when the connection ends.
func (c *Conn) Done() <-chan struct{} { return c.done }

func (c *Conn) read() {
	defer close(c.pushes)
	defer close(c.done)
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				c.CloseCode.Store(int64(ce.Code))
			}
			c.err = err
			return
		}
		var f Frame
		if json.Unmarshal(data, &f) != nil {
			continue
		}
		if op := f["op"]; op == "ok" || op == "error" {
			if id, _ := f["id"].(string); id != "" {
				c.mu.Lock()
				ch := c.wait[id]
				delete(c.wait, id)
				c.mu.Unlock()
				if ch != nil {
					ch <- f
					continue
				}
			}
		}
		select {
		case c.pushes <- f:
		case <-c.quit:
			return
		}
	}
}

// Request sends a frame with a fresh id and waits for its reply. An error reply is returned
// as *Error.
func (c *Conn) Request(ctx context.Context, f Frame) (Frame, error) {
	id := "c" + strconv.FormatInt(c.seq.Add(1), 10)
	f["id"] = id
	ch := make(chan Frame, 1)
	c.mu.Lock()
	c.wait[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.wait, id)
		c.mu.Unlock()
	}()
	c.wmu.Lock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	err := c.ws.WriteJSON(f)
	c.wmu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("client: write %v: %w", f["op"], err)
	}
	select {
	case r := <-ch:
		return reply(r)
	case <-c.done:
		// The reader hands a reply over before it reads on and meets the close; select picks
		// at random once both are ready, so a reply followed by a close is still returned.
		select {
		case r := <-ch:
			return reply(r)
		default:
		}
		return nil, fmt.Errorf("client: connection closed awaiting %v: %w", f["op"], c.err)
	case <-ctx.Done():
		return nil, fmt.Errorf("client: awaiting %v: %w", f["op"], ctx.Err())
	}
}

// reply returns an ok frame, or an error frame as *Error.
func reply(r Frame) (Frame, error) {
	if r["op"] == "error" {
		code, _ := r["code"].(string)
		msg, _ := r["message"].(string)
		return r, &Error{Code: code, Message: msg}
	}
	return r, nil
}

// Send sends a text message and returns its event id.
func (c *Conn) Send(ctx context.Context, roomID, txnID, body string) (string, error) {
	r, err := c.Request(ctx, Frame{"op": "send", "room_id": roomID, "txn_id": txnID,
		"content": Frame{"msgtype": "m.text", "body": body}})
	if err != nil {
		return "", err
	}
	id, _ := r["event_id"].(string)
	return id, nil
}

// Close closes the connection and waits for the reader to end.
func (c *Conn) Close() {
	c.once.Do(func() { close(c.quit) })
	c.ws.Close()
	<-c.done
}
