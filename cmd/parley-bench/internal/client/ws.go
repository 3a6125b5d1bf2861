package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Event is a pushed room event ({"op":"event","event":EVENT}), reduced to
// the fields the bench tool looks at. Content is decoded loosely: fields it
// does not know are ignored.
type Event struct {
	EventID   string  `json:"event_id"`
	RoomID    string  `json:"room_id"`
	Sender    string  `json:"sender"`
	Origin    string  `json:"origin"`
	OriginTS  int64   `json:"origin_ts"`
	Type      string  `json:"type"`
	StreamPos int64   `json:"stream_pos"`
	Content   Content `json:"content"`
	Unsigned  struct {
		TxnID string `json:"txn_id"`
	} `json:"unsigned"`
}

// Content holds the content fields of interest for message and member events.
type Content struct {
	MsgType    string `json:"msgtype"`
	Body       string `json:"body"`
	Membership string `json:"membership"`
}

// Reply is an {"op":"ok"} or {"op":"error"} answer.
type Reply struct {
	Op      string
	ID      string
	UserID  string
	RoomID  string
	EventID string
	// Raw is the whole frame, for results the fields above do not cover.
	Raw []byte
	// At is when the frame was read.
	At time.Time
}

// Error is a protocol error answer: {"op":"error","code","message","retry_after_ms"?}.
type Error struct {
	Code       string
	Message    string
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("%s: %s (retry after %s)", e.Code, e.Message, e.RetryAfter)
	}
	return e.Code + ": " + e.Message
}

// Code returns the protocol error code of err ("" if it is not an *Error).
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// ClosedError says the connection ended, with the close frame's code and
// reason when the node sent one (e.g. 1008 "slow consumer").
type ClosedError struct {
	Code   int // 0 when there was no close frame
	Reason string
	Err    error
}

func (e *ClosedError) Error() string {
	if e.Code != 0 {
		return fmt.Sprintf("connection closed: %d %s", e.Code, e.Reason)
	}
	if e.Err != nil {
		return "connection closed: " + e.Err.Error()
	}
	return "connection closed"
}

func (e *ClosedError) Unwrap() error { return e.Err }

// Close codes of interest.
const (
	ClosePolicyViolation = websocket.ClosePolicyViolation // 1008, "slow consumer"
	CloseAuthFailed      = 4001
)

// DialOptions configures Dial.
type DialOptions struct {
	// LocalIP, when set, is the source address of the TCP connection.
	LocalIP net.IP
	// Insecure skips TLS certificate verification (wss only).
	Insecure bool
	// TokenInQuery authenticates with ?access_token= instead of an auth frame.
	TokenInQuery bool
	// Timeout bounds the TCP+WebSocket handshake and the auth round trip
	// (default 10 s).
	Timeout time.Duration
	// ReadBufferSize, WriteBufferSize: gorilla buffer sizes (default 4096);
	// small values keep thousands of idle connections cheap.
	ReadBufferSize, WriteBufferSize int
	// WriteBufferPool shares write buffers among connections when set.
	WriteBufferPool websocket.BufferPool
	// OnEvent is called from the connection's reader (its goroutine, or the
	// Poller loop that serves it) for every pushed event, with the time the
	// frame was read. It must not block. The event is the reader's and is
	// reused for the next frame: a callback may keep its strings, not the
	// pointer.
	OnEvent func(ev *Event, at time.Time)
	// EventViews hands OnEvent the event id, body and txn id as views of the
	// frame's bytes rather than copies: valid only during the call, so a
	// callback that keeps one keeps strings.Clone of it. It saves the two
	// allocations a pushed event otherwise costs the reader.
	EventViews bool
	// ReadLimit caps the size of one incoming message (default 8 MiB).
	ReadLimit int64
	// Poller, when set, reads the connection with its epoll loops instead of
	// a goroutine of its own (Linux only). Connections it cannot serve — TLS,
	// TokenInQuery, no raw file descriptor — get a reader goroutine as usual.
	Poller *Poller
}

// Conn is one authenticated WebSocket connection. Requests may be made from
// many goroutines at once.
type Conn struct {
	ws      *websocket.Conn
	onEvent func(*Event, time.Time)
	views   bool // DialOptions.EventViews
	userID  string

	// Writes are coalesced (see write): frames queued while one goroutine is in the socket's
	// write go out together in its next one.
	wmu       sync.Mutex
	wqueued   *frameBatch // frames waiting for the next write; guarded by wmu
	wflushing bool        // a goroutine is writing batches; guarded by wmu

	mu      sync.Mutex
	pending map[string]chan *frameIn
	closed  bool

	nextID   atomic.Uint64
	events   atomic.Int64
	badFrame atomic.Int64
	noIDErr  atomic.Pointer[Error]

	done     chan struct{}
	closeErr *ClosedError // written under mu, before done is closed
	readerWG sync.WaitGroup

	readLimit int64
	poll      *pollConn // non-nil when a Poller reads the connection
}

// frameIn is what the reader decodes from every frame.
type frameIn struct {
	Op           string `json:"op"`
	ID           string `json:"id"`
	Code         string `json:"code"`
	Message      string `json:"message"`
	RetryAfterMS int64  `json:"retry_after_ms"`
	UserID       string `json:"user_id"`
	RoomID       string `json:"room_id"`
	EventID      string `json:"event_id"`
	Event        *Event `json:"event"`

	raw []byte
	at  time.Time
}

// Dial opens a WebSocket to wsURL and authenticates with token.
func Dial(ctx context.Context, wsURL, token string, o DialOptions) (*Conn, error) {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.ReadLimit <= 0 {
		o.ReadLimit = 8 << 20
	}
	nd := &net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}
	if o.LocalIP != nil {
		nd.LocalAddr = &net.TCPAddr{IP: o.LocalIP}
	}
	d := websocket.Dialer{
		NetDialContext:   nd.DialContext,
		HandshakeTimeout: o.Timeout,
		ReadBufferSize:   o.ReadBufferSize,
		WriteBufferSize:  o.WriteBufferSize,
		WriteBufferPool:  o.WriteBufferPool,
		TLSClientConfig:  TLSConfig(o.Insecure),
	}
	u := wsURL
	if o.TokenInQuery {
		pu, err := url.Parse(wsURL)
		if err != nil {
			return nil, err
		}
		q := pu.Query()
		q.Set("access_token", token)
		pu.RawQuery = q.Encode()
		u = pu.String()
	}
	usePoller := o.Poller != nil && !o.TokenInQuery && strings.HasPrefix(u, "ws://")
	if usePoller {
		// The read buffer only serves the handshake (and the reader goroutine of
		// a connection the poller turns down): the poller reads frames into its
		// own buffer, and a connection holds none while it is idle.
		d.ReadBufferSize = 1024
	}
	dctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	ws, resp, err := d.DialContext(dctx, u, nil)
	if err != nil {
		if resp != nil {
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode != http.StatusSwitchingProtocols {
				return nil, fmt.Errorf("websocket upgrade: %w", parseAPIError(resp.StatusCode, data))
			}
		}
		return nil, fmt.Errorf("websocket dial: %w", err)
	}
	ws.SetReadLimit(o.ReadLimit)
	c := &Conn{
		ws:        ws,
		onEvent:   o.OnEvent,
		views:     o.EventViews,
		pending:   make(map[string]chan *frameIn),
		done:      make(chan struct{}),
		readLimit: o.ReadLimit,
	}
	// The node speaks only when asked, and nothing has been asked yet: gorilla's
	// read buffer holds nothing beyond the handshake answer, so the socket's
	// bytes from here on are all the reader's.
	if !usePoller || !o.Poller.register(c) {
		c.readerWG.Add(1)
		go c.readLoop()
	}
	if o.TokenInQuery {
		return c, nil
	}
	actx, cancel2 := context.WithTimeout(ctx, o.Timeout)
	defer cancel2()
	r, err := c.Call(actx, "auth", map[string]any{"token": token})
	if err != nil {
		c.Abort()
		return nil, fmt.Errorf("auth: %w", err)
	}
	c.userID = r.UserID
	return c, nil
}

// UserID is the user the connection authenticated as ("" with TokenInQuery).
func (c *Conn) UserID() string { return c.userID }

// Events is the number of pushed events received so far.
func (c *Conn) Events() int64 { return c.events.Load() }

// BadFrames is the number of frames that were not valid JSON objects.
func (c *Conn) BadFrames() int64 { return c.badFrame.Load() }

// Polled says whether a Poller reads the connection (else a goroutine does).
func (c *Conn) Polled() bool { return c.poll != nil }

// Done is closed when the connection has ended and its reader has stopped.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, nil while it is open.
func (c *Conn) Err() *ClosedError {
	select {
	case <-c.done:
		return c.closeErr
	default:
		return nil
	}
}

func (c *Conn) readLoop() {
	defer c.readerWG.Done()
	var buf bytes.Buffer
	var er eventReader // the fast path, which reuses the previous event's strings
	for {
		_, r, err := c.ws.NextReader()
		if err != nil {
			c.finish(err)
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			c.finish(err)
			return
		}
		c.handleMessage(&er, buf.Bytes(), time.Now())
		if buf.Cap() > 256<<10 {
			buf = bytes.Buffer{} // do not keep a huge buffer per connection
		}
	}
}

// handleMessage handles one message from the node, read at at, with er as the event
// push fast path. data is valid only during the call. It is called by the connection's
// one reader: its goroutine, or the poller loop that serves it. er should be on the
// caller's stack: scan copies events in it, which costs write barriers while the GC
// marks if it is on the heap.
func (c *Conn) handleMessage(er *eventReader, data []byte, at time.Time) {
	er.views = c.views
	if er.scan(data) {
		c.events.Add(1)
		if c.onEvent != nil {
			c.onEvent(&er.ev, at) // no copy: one per delivery was 7% of the tool's fan-out CPU
		}
		return
	}
	f := &frameIn{}
	if !scanOKFrame(data, f) {
		if err := json.Unmarshal(data, f); err != nil {
			c.badFrame.Add(1)
			return
		}
	}
	switch f.Op {
	case "event":
		c.events.Add(1)
		if f.Event != nil && c.onEvent != nil {
			c.onEvent(f.Event, at)
		}
	case "ok", "error":
		if f.ID == "" {
			if f.Op == "error" {
				c.noIDErr.Store(f.asError())
			}
			return
		}
		f.raw = bytes.Clone(data)
		f.at = at
		c.mu.Lock()
		ch := c.pending[f.ID]
		delete(c.pending, f.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- f // buffered, one slot
		}
	default:
		// typing, receipt, presence, unknown ops: ignored
	}
}

func (f *frameIn) asError() *Error {
	e := &Error{Code: f.Code, Message: f.Message}
	if f.RetryAfterMS > 0 {
		e.RetryAfter = time.Duration(f.RetryAfterMS) * time.Millisecond
	}
	if e.Code == "" {
		e.Code = "M_UNKNOWN"
	}
	return e
}

// finish ends the connection with err (the first call only): it fails every pending
// call, closes the socket and then done. In poller mode the connection must have left
// its poller first.
func (c *Conn) finish(err error) {
	ce := &ClosedError{Err: err}
	var wce *websocket.CloseError
	if errors.As(err, &wce) {
		ce.Code, ce.Reason = wce.Code, wce.Text
	}
	if e := c.noIDErr.Load(); e != nil && ce.Code != 0 {
		ce.Reason = fmt.Sprintf("%s (%s: %s)", ce.Reason, e.Code, e.Message)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closeErr = ce
	c.closed = true
	c.pending = map[string]chan *frameIn{}
	c.mu.Unlock()
	_ = c.ws.Close()
	close(c.done)
}

// Call sends {"op":op,"id":…,params…} and waits for its reply. A protocol
// error answer is returned as *Error together with the reply.
func (c *Conn) Call(ctx context.Context, op string, params map[string]any) (*Reply, error) {
	id := strconv.FormatUint(c.nextID.Add(1), 10)
	m := make(map[string]any, len(params)+2)
	for k, v := range params {
		m[k] = v
	}
	m["op"] = op
	m["id"] = id
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return c.roundTrip(ctx, id, b)
}

type sendFrame struct {
	Op      string      `json:"op"`
	ID      string      `json:"id"`
	RoomID  string      `json:"room_id"`
	TxnID   string      `json:"txn_id"`
	Content sendContent `json:"content"`
}

type sendContent struct {
	MsgType string `json:"msgtype"`
	Body    string `json:"body"`
}

// Send sends an m.text message and waits for its event_id (the node answers
// only once the event is committed).
func (c *Conn) Send(ctx context.Context, roomID, txnID, body string) (*Reply, error) {
	id := strconv.FormatUint(c.nextID.Add(1), 10)
	b, err := json.Marshal(sendFrame{Op: "send", ID: id, RoomID: roomID, TxnID: txnID,
		Content: sendContent{MsgType: "m.text", Body: body}})
	if err != nil {
		return nil, err
	}
	return c.roundTrip(ctx, id, b)
}

// CreateRoom creates a room and returns its id. alias may be empty.
func (c *Conn) CreateRoom(ctx context.Context, name, visibility, alias string) (string, error) {
	p := map[string]any{"visibility": visibility}
	if name != "" {
		p["name"] = name
	}
	if alias != "" {
		p["alias"] = alias
	}
	r, err := c.Call(ctx, "create_room", p)
	if err != nil {
		return "", err
	}
	if r.RoomID == "" {
		return "", errors.New("create_room: answer has no room_id")
	}
	return r.RoomID, nil
}

// Join joins a room by id or alias and returns the room id.
func (c *Conn) Join(ctx context.Context, room string) (string, error) {
	r, err := c.Call(ctx, "join", map[string]any{"room": room})
	if err != nil {
		return "", err
	}
	if r.RoomID == "" {
		return room, nil
	}
	return r.RoomID, nil
}

// Ping round-trips a ping op.
func (c *Conn) Ping(ctx context.Context) error {
	_, err := c.Call(ctx, "ping", nil)
	return err
}

func (c *Conn) roundTrip(ctx context.Context, id string, payload []byte) (*Reply, error) {
	ch := make(chan *frameIn, 1)
	c.mu.Lock()
	if c.closed {
		err := c.closeErr
		c.mu.Unlock()
		return nil, err
	}
	c.pending[id] = ch
	c.mu.Unlock()

	if err := c.write(payload); err != nil {
		c.forget(id)
		return nil, err
	}
	select {
	case f := <-ch:
		return f.reply()
	case <-ctx.Done():
		c.forget(id)
		return nil, ctx.Err()
	case <-c.done:
		select { // a reply may have raced with the close
		case f := <-ch:
			return f.reply()
		default:
		}
		return nil, c.closeErr
	}
}

func (f *frameIn) reply() (*Reply, error) {
	r := &Reply{Op: f.Op, ID: f.ID, UserID: f.UserID, RoomID: f.RoomID, EventID: f.EventID, Raw: f.raw, At: f.at}
	if f.Op == "error" {
		return r, f.asError()
	}
	return r, nil
}

func (c *Conn) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *Conn) write(payload []byte) error {
	c.wmu.Lock()
	select {
	case <-c.done:
		c.wmu.Unlock()
		return c.closeErr
	default:
	}
	mine := c.wqueued
	if mine == nil {
		mine = &frameBatch{written: make(chan struct{})}
		c.wqueued = mine
	}
	mine.frames = appendClientFrame(mine.frames, payload)
	if c.wflushing {
		c.wmu.Unlock()
		<-mine.written
		return mine.err
	}
	// This goroutine writes its own batch and every batch queued meanwhile, one write each:
	// a pipelining sender whose oks arrive together sends its next frames in one system call,
	// as a NATS client's flusher does, instead of one each (a quarter of the tool's CPU).
	c.wflushing = true
	// Senders woken by the same read are runnable now: let them queue their frames first.
	c.wmu.Unlock()
	runtime.Gosched()
	c.wmu.Lock()
	for c.wqueued != nil {
		b := c.wqueued
		c.wqueued = nil
		c.wmu.Unlock()
		b.err = c.writeFrames(b.frames)
		close(b.written)
		c.wmu.Lock()
	}
	c.wflushing = false
	c.wmu.Unlock()
	return mine.err
}

// frameBatch is client frames that go to the socket in one write, and its outcome.
type frameBatch struct {
	frames  []byte
	err     error         // set before written is closed
	written chan struct{} // closed once the write is done
}

// writeFrames writes whole frames to the socket. Gorilla's own writes (close and pong frames)
// take the socket's write lock too, so no frame is ever split by another.
func (c *Conn) writeFrames(frames []byte) error {
	nc := c.ws.NetConn()
	_ = nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(frames); err != nil {
		c.shutdown() // the connection ends and fails every pending call
		return &ClosedError{Err: err}
	}
	return nil
}

// shutdown closes the socket. A reader goroutine then ends the connection; in poller
// mode there is none, so shutdown takes the connection out of its poller (before the
// socket is closed, so that the poller never reads a reused descriptor) and ends it with
// the error that reader would have seen.
func (c *Conn) shutdown() {
	if pc := c.poll; pc != nil {
		pc.detach()
		c.finish(c.readError(net.ErrClosed)) // what reading a socket closed on this side returns
		return
	}
	_ = c.ws.Close()
}

// readError is err as a failed read of the connection's socket reports it.
func (c *Conn) readError(err error) error {
	return &net.OpError{Op: "read", Net: c.ws.LocalAddr().Network(), Source: c.ws.LocalAddr(), Addr: c.ws.RemoteAddr(), Err: err}
}

// Close says goodbye with a 1000 close frame, waits up to wait for the
// node's answer, then closes the socket and waits for the reader goroutine
// (in poller mode it takes the connection out of its poller and ends it).
// It is safe to call more than once and concurrently.
func (c *Conn) Close(wait time.Duration) {
	select {
	case <-c.done:
		c.readerWG.Wait()
		return
	default:
	}
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bench done")
	if err := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second)); err == nil && wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-c.done:
		case <-t.C:
		}
		t.Stop()
	}
	c.shutdown()
	<-c.done
	c.readerWG.Wait()
}

// Abort closes the socket at once, without a close handshake.
func (c *Conn) Abort() {
	c.shutdown()
	<-c.done
	c.readerWG.Wait()
}
