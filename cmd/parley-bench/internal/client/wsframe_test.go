package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// srvFrame is one frame as a server sends it: unmasked, the shortest length form.
func srvFrame(fin bool, op int, payload []byte) []byte {
	b0 := byte(op)
	if fin {
		b0 |= wsFinBit
	}
	var h []byte
	switch n := len(payload); {
	case n <= 125:
		h = []byte{b0, byte(n)}
	case n <= 0xffff:
		h = []byte{b0, 126, 0, 0}
		binary.BigEndian.PutUint16(h[2:], uint16(n))
	default:
		h = []byte{b0, 127, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint64(h[2:], uint64(n))
	}
	return append(h, payload...)
}

// srvFrame64 is a frame with its length in the 64-bit form whatever its size.
func srvFrame64(fin bool, op int, payload []byte) []byte {
	h := []byte{byte(op), 127, 0, 0, 0, 0, 0, 0, 0, 0}
	if fin {
		h[0] |= wsFinBit
	}
	binary.BigEndian.PutUint64(h[2:], uint64(len(payload)))
	return append(h, payload...)
}

func text(s string) []byte { return srvFrame(true, wsOpText, []byte(s)) }

func closeFrame(code int, reason string) []byte {
	return srvFrame(true, wsOpClose, websocket.FormatCloseMessage(code, reason))
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// frameSink receives what wsParser.feed parses (the tests' way to drive next).
type frameSink interface {
	// message is a complete text or binary message. payload is valid only during the call.
	message(payload []byte)
	// ping is a ping frame's payload, to be answered with a pong; an error ends the feed.
	ping(payload []byte) error
}

// feed parses all of data with next, handing every message to s.message and every ping
// to s.ping, and returns next's error or s.ping's.
func (p *wsParser) feed(data []byte, s frameSink) error {
	for {
		kind, payload, err := p.next(&data)
		switch {
		case err != nil:
			return err
		case kind == frameMessage:
			s.message(payload)
		case kind == framePing:
			if err := s.ping(payload); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// logSink records what the parser hands over.
type logSink struct {
	log     []string
	pingErr error
}

func (s *logSink) message(b []byte) { s.log = append(s.log, "msg:"+string(b)) }
func (s *logSink) ping(b []byte) error {
	s.log = append(s.log, "ping:"+string(b))
	return s.pingErr
}

// parsePieces feeds data cut at the given offsets (ascending) to one parser, stopping at
// the first error.
func parsePieces(data []byte, limit int64, cuts ...int) (*wsParser, []string, error) {
	p := &wsParser{limit: limit}
	s := &logSink{}
	prev := 0
	for _, c := range append(cuts, len(data)) {
		if err := p.feed(data[prev:c], s); err != nil {
			return p, s.log, err
		}
		prev = c
	}
	return p, s.log, nil
}

// parseBytewise feeds data one byte at a time.
func parseBytewise(data []byte, limit int64) (*wsParser, []string, error) {
	p := &wsParser{limit: limit}
	s := &logSink{}
	for i := range data {
		if err := p.feed(data[i:i+1], s); err != nil {
			return p, s.log, err
		}
	}
	return p, s.log, nil
}

// outcome renders how a parse ended so that the parser's and gorilla's compare: "eof"
// when the data ran out (gorilla: its unexpected-EOF close error), "close CODE TEXT" for a
// close frame, else the error text.
func outcome(err error, gorilla bool) string {
	var ce *websocket.CloseError
	switch {
	case err == nil:
		return "eof"
	case errors.As(err, &ce):
		if gorilla && ce.Code == websocket.CloseAbnormalClosure && ce.Text == io.ErrUnexpectedEOF.Error() {
			return "eof"
		}
		return fmt.Sprintf("close %d %q", ce.Code, ce.Text)
	}
	return err.Error()
}

// gorillaRead reads data as it comes after the handshake with gorilla's client reader,
// message by message as readLoop does, and returns what it saw and its error.
func gorillaRead(t testing.TB, data []byte, limit int64) ([]string, error) {
	fc := &scriptConn{after: data}
	d := websocket.Dialer{NetDialContext: func(context.Context, string, string) (net.Conn, error) { return fc, nil }}
	ws, _, err := d.Dial("ws://fake.test/v1/ws", nil)
	if err != nil {
		t.Fatalf("gorilla handshake: %v", err)
	}
	defer ws.Close()
	ws.SetReadLimit(limit)
	var log []string
	ws.SetPingHandler(func(s string) error { log = append(log, "ping:"+s); return nil })
	for {
		_, r, err := ws.NextReader()
		if err != nil {
			return log, err
		}
		b, err := io.ReadAll(r)
		if err != nil {
			return log, err
		}
		log = append(log, "msg:"+string(b))
	}
}

// scriptConn is a net.Conn whose peer answers the WebSocket handshake, then sends after
// and ends the stream. What the client writes after the handshake is dropped.
type scriptConn struct {
	req   bytes.Buffer
	resp  []byte
	after []byte
	ready bool
}

func (c *scriptConn) Write(b []byte) (int, error) {
	if !c.ready {
		c.req.Write(b)
		if bytes.Contains(c.req.Bytes(), []byte("\r\n\r\n")) {
			req, err := http.ReadRequest(bufio.NewReader(&c.req))
			if err != nil {
				return 0, err
			}
			h := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
			c.resp = append([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+
				base64.StdEncoding.EncodeToString(h[:])+"\r\n\r\n"), c.after...)
			c.ready = true
		}
	}
	return len(b), nil
}

func (c *scriptConn) Read(b []byte) (int, error) {
	if len(c.resp) == 0 {
		return 0, io.EOF
	}
	n := copy(b, c.resp)
	c.resp = c.resp[n:]
	return n, nil
}

func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// checkLikeGorilla parses data whole, in two pieces at cut, and (when small) a byte at
// a time, and fails unless every way gives what gorilla's reader gives.
func checkLikeGorilla(t testing.TB, data []byte, limit int64, cut int) ([]string, error) {
	t.Helper()
	_, log, err := parsePieces(data, limit)
	want, gerr := gorillaRead(t, data, limit)
	if !reflect.DeepEqual(log, want) || outcome(err, false) != outcome(gerr, true) {
		t.Fatalf("parsing %q (limit %d):\nparser  %q %s\ngorilla %q %s", data, limit, log, outcome(err, false), want, outcome(gerr, true))
	}
	cut = min(max(cut, 0), len(data))
	if _, log2, err2 := parsePieces(data, limit, cut); !reflect.DeepEqual(log2, log) || outcome(err2, false) != outcome(err, false) {
		t.Fatalf("parsing %q cut at %d:\n%q %s\nwhole: %q %s", data, cut, log2, outcome(err2, false), log, outcome(err, false))
	}
	if len(data) <= 4096 {
		if _, log3, err3 := parseBytewise(data, limit); !reflect.DeepEqual(log3, log) || outcome(err3, false) != outcome(err, false) {
			t.Fatalf("parsing %q a byte at a time:\n%q %s\nwhole: %q %s", data, log3, outcome(err3, false), log, outcome(err, false))
		}
	}
	return log, err
}

// A stream with every kind of frame a client accepts, ending on a close frame.
func acceptedStream() ([]byte, []string) {
	b300 := strings.Repeat("x", 300)
	data := cat(
		text("hello"),
		text(""),
		srvFrame(true, wsOpBinary, []byte("bin")),
		text(b300), // 16-bit length
		srvFrame64(true, wsOpText, []byte("long form")),
		srvFrame(true, wsOpPong, []byte("pong")),
		srvFrame(true, wsOpPing, []byte("p1")),
		srvFrame(false, wsOpText, []byte(`{"op":`)),
		srvFrame(true, wsOpPing, []byte("p2")),
		srvFrame(false, wsOpContinuation, nil),
		srvFrame(false, wsOpContinuation, []byte(`"ok","id":`)),
		srvFrame(true, wsOpContinuation, []byte(`"1"}`)),
		text("after"),
		closeFrame(websocket.ClosePolicyViolation, "slow consumer"),
	)
	want := []string{"msg:hello", "msg:", "msg:bin", "msg:" + b300, "msg:long form", "ping:p1", "ping:p2",
		`msg:{"op":"ok","id":"1"}`, "msg:after"}
	return data, want
}

func TestParseServerFramesSplitAnywhere(t *testing.T) {
	data, want := acceptedStream()
	checkClose := func(how string, p *wsParser, log []string, err error) {
		t.Helper()
		var ce *websocket.CloseError
		if !reflect.DeepEqual(log, want) || !errors.As(err, &ce) || ce.Code != 1008 || ce.Text != "slow consumer" {
			t.Fatalf("%s: %q %v", how, log, err)
		}
		if p.msg != nil || p.inMsg || p.msgLen != 0 {
			t.Fatalf("%s: message state left: %+v", how, p)
		}
	}
	for i := 0; i <= len(data); i++ {
		p, log, err := parsePieces(data, 1<<20, i)
		checkClose(fmt.Sprintf("cut at %d", i), p, log, err)
		for j := i; j <= len(data); j += 7 {
			p, log, err := parsePieces(data, 1<<20, i, j)
			checkClose(fmt.Sprintf("cut at %d and %d", i, j), p, log, err)
		}
	}
	p, log, err := parseBytewise(data, 1<<20)
	checkClose("a byte at a time", p, log, err)
	checkLikeGorilla(t, data, 1<<20, len(data)/2)

	// Without the close frame the stream ends on a frame boundary: nothing is carried.
	open := data[:bytes.LastIndex(data, closeFrame(websocket.ClosePolicyViolation, "slow consumer"))]
	for i := 0; i <= len(open); i++ {
		p, log, err := parsePieces(open, 1<<20, i)
		if err != nil || !reflect.DeepEqual(log, want) {
			t.Fatalf("cut at %d: %q %v", i, log, err)
		}
		if p.carry != nil || p.msg != nil {
			t.Fatalf("cut at %d: buffers held between messages: carry %d msg %d", i, cap(p.carry), cap(p.msg))
		}
	}
	// Cut inside a frame, the start is carried, and only until the frame is complete.
	p, _, _ = parsePieces(open[:len(open)-2], 1<<20)
	if len(p.carry) != len(text("after"))-2 {
		t.Fatalf("carry %q", p.carry)
	}
	s := &logSink{}
	if err := p.feed(open[len(open)-2:], s); err != nil || p.carry != nil || !reflect.DeepEqual(s.log, []string{"msg:after"}) {
		t.Fatalf("%v carry %q log %q", err, p.carry, s.log)
	}
}

func TestParseServerFramesLengths(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 1000, 0xffff, 0x10000, 70_000, 200_000} {
		payload := bytes.Repeat([]byte{'a'}, n)
		for i := range payload {
			payload[i] = byte('a' + i%26)
		}
		f := text(string(payload))
		wantHdr := map[bool]int{true: 2}[n <= 125]
		if n > 125 && n <= 0xffff {
			wantHdr = 4
		} else if n > 0xffff {
			wantHdr = 10
		}
		if len(f)-n != wantHdr {
			t.Fatalf("%d: header %d", n, len(f)-n)
		}
		data := cat(f, text("next"), srvFrame64(true, wsOpText, payload))
		want := []string{"msg:" + string(payload), "msg:next", "msg:" + string(payload)}
		cuts := []int{0, 1, 2, 3, 4, 5, 9, 10, 11, len(f) / 2, len(f) - 1, len(f), len(f) + 1, len(data) - n - 1, len(data) - 1}
		for _, c := range cuts {
			c = min(c, len(data))
			if _, log, err := parsePieces(data, 1<<20, c); err != nil || !reflect.DeepEqual(log, want) {
				t.Fatalf("size %d cut %d: %v (%d messages)", n, c, err, len(log))
			}
		}
		if n <= 70_000 {
			if _, log, err := parseBytewise(data, 1<<20); err != nil || !reflect.DeepEqual(log, want) {
				t.Fatalf("size %d a byte at a time: %v", n, err)
			}
		}
		checkLikeGorilla(t, data, 1<<20, len(f)+3)
	}
}

func TestParseServerFramesClose(t *testing.T) {
	cases := []struct {
		data []byte
		want string
	}{
		{closeFrame(websocket.ClosePolicyViolation, "slow consumer"), `close 1008 "slow consumer"`},
		{closeFrame(CloseAuthFailed, "unauthorized"), `close 4001 "unauthorized"`},
		{closeFrame(websocket.CloseNormalClosure, ""), `close 1000 ""`},
		{srvFrame(true, wsOpClose, nil), `close 1005 ""`},
		{srvFrame(true, wsOpClose, []byte{3}), `close 1005 ""`}, // too short for a code: as gorilla
		{closeFrame(websocket.CloseNoStatusReceived+1, "x"), "websocket: bad close code 1006"},
		{closeFrame(999, ""), "websocket: bad close code 999"},
		{closeFrame(4999, "app"), `close 4999 "app"`},
		{closeFrame(5000, ""), "websocket: bad close code 5000"},
		{srvFrame(true, wsOpClose, []byte{0x03, 0xe8, 0xff}), "websocket: invalid utf8 payload in close frame"},
	}
	for _, c := range cases {
		data := cat(text("before"), c.data, text("never"))
		log, err := checkLikeGorilla(t, data, 1<<20, 3)
		if got := outcome(err, false); got != c.want || !reflect.DeepEqual(log, []string{"msg:before"}) {
			t.Errorf("%q: %q %s, want %s", c.data, log, got, c.want)
		}
	}
}

func TestParseServerFramesRefused(t *testing.T) {
	over := srvFrame(true, wsOpText, make([]byte, 101))
	cases := []struct {
		name      string
		data      []byte
		want      string
		closeCode int // the close frame the client sends, 0 for none
	}{
		{"masked", []byte{0x81, 0x85, 1, 2, 3, 4, 'h', 'e', 'l', 'l', 'o'}, "websocket: bad MASK", 1002},
		{"masked header only", []byte{0x81, 0x85}, "websocket: bad MASK", 1002},
		{"rsv1", []byte{0xc1, 0}, "websocket: RSV1 set", 1002},
		{"rsv2 rsv3", []byte{0xb1, 0}, "websocket: RSV2 set, RSV3 set", 1002},
		{"bad opcode", []byte{0x83, 0}, "websocket: bad opcode 3", 1002},
		{"long ping", srvFrame(true, wsOpPing, make([]byte, 126)), "websocket: len > 125 for control", 1002},
		{"ping without fin", srvFrame(false, wsOpPing, nil), "websocket: FIN not set on control", 1002},
		{"continuation alone", srvFrame(true, wsOpContinuation, []byte("x")), "websocket: continuation after FIN", 1002},
		{"text inside a message", cat(srvFrame(false, wsOpText, []byte("a")), text("b")), "websocket: data before FIN", 1002},
		{"over the limit", over, "websocket: read limit exceeded", 1009},
		{"over the limit, header only", over[:4], "websocket: read limit exceeded", 1009},
		{"over the limit in fragments", cat(srvFrame(false, wsOpText, make([]byte, 60)), srvFrame(true, wsOpContinuation, make([]byte, 41))),
			"websocket: read limit exceeded", 1009},
		{"64-bit length with the top bit set", []byte{0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, "websocket: read limit exceeded", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := cat(text("before"), c.data, text("never"))
			log, err := checkLikeGorilla(t, data, 100, 7)
			var fe *frameError
			if !reflect.DeepEqual(log, []string{"msg:before"}) || !errors.As(err, &fe) || err.Error() != c.want || fe.closeCode != c.closeCode {
				t.Fatalf("%q: %q %v %+v", data, log, err, fe)
			}
			if c.closeCode == 1002 {
				code, reason := decodeClose(fe.closeMessage())
				if code != 1002 || "websocket: "+reason != c.want {
					t.Fatalf("close message %d %q", code, reason)
				}
			}
		})
	}
	// At the limit exactly, whole or in fragments, is accepted.
	ok := cat(srvFrame(true, wsOpText, make([]byte, 100)), srvFrame(false, wsOpText, make([]byte, 60)), srvFrame(true, wsOpContinuation, make([]byte, 40)))
	if log, err := checkLikeGorilla(t, ok, 100, 50); err != nil || len(log) != 2 {
		t.Fatalf("%q %v", log, err)
	}
}

func decodeClose(m []byte) (int, string) {
	if len(m) < 2 {
		return 0, ""
	}
	return int(binary.BigEndian.Uint16(m)), string(m[2:])
}

func TestParseServerFramesPing(t *testing.T) {
	p := &wsParser{limit: 1000}
	s := &logSink{}
	data := cat(srvFrame(true, wsOpPing, []byte("are you there")), srvFrame(true, wsOpPing, nil), text("x"))
	if err := p.feed(data, s); err != nil || !reflect.DeepEqual(s.log, []string{"ping:are you there", "ping:", "msg:x"}) {
		t.Fatalf("%q %v", s.log, err)
	}
	// A pong that cannot be sent ends the connection, before what follows the ping.
	boom := errors.New("boom")
	s = &logSink{pingErr: boom}
	if err := p.feed(data, s); err != boom || len(s.log) != 1 {
		t.Fatalf("%q %v", s.log, err)
	}
}

// FuzzParseServerFrames holds the parser to gorilla's reader: the same messages and pings
// in the same order and the same end, however the bytes are cut into reads.
func FuzzParseServerFrames(f *testing.F) {
	stream, _ := acceptedStream()
	seeds := [][]byte{
		stream,
		text("hello"),
		cat(text("a"), text("b")),
		text(strings.Repeat("y", 200)),
		srvFrame64(true, wsOpText, []byte("x")),
		cat(srvFrame(false, wsOpText, []byte("a")), srvFrame(true, wsOpPing, []byte("p")), srvFrame(true, wsOpContinuation, []byte("b"))),
		closeFrame(1008, "slow consumer"),
		srvFrame(true, wsOpClose, nil),
		srvFrame(true, wsOpClose, []byte{1}),
		closeFrame(1005, ""),
		closeFrame(5000, ""),
		srvFrame(true, wsOpClose, []byte{0x03, 0xe8, 0xc3}),
		{0x81, 0x85, 1, 2, 3, 4, 'h', 'e', 'l', 'l', 'o'},
		{0xc1, 0},
		{0xf1, 0x80},
		srvFrame(true, wsOpPing, make([]byte, 126)),
		srvFrame(false, wsOpPong, nil),
		srvFrame(true, wsOpContinuation, nil),
		srvFrame(true, wsOpText, make([]byte, 301)),
		cat(srvFrame(false, wsOpText, make([]byte, 200)), srvFrame(true, wsOpContinuation, make([]byte, 101))),
		{0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 0},
		{0x81, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		{0x81, 126, 0},
		[]byte(realFrame),
		text(realFrame),
	}
	for _, s := range seeds {
		for _, cut := range []uint16{0, 1, uint16(len(s) / 2), uint16(len(s) - 1)} {
			f.Add(s, cut)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		checkLikeGorilla(t, data, 300, int(cut))
	})
}
