package client

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// The poller (poller_linux.go) reads subscriber sockets itself, so it parses the WebSocket
// frames a server sends (RFC 6455 §5.2: never masked) itself too. wsParser does it the way
// gorilla/websocket's reader does for this tool: the same checks in the same order with the
// same error texts, the same close-frame decoding and the same read limit over a whole
// message (FuzzParseServerFrames holds the two to it), so a connection ends with the same
// ClosedError whichever reader served it.

const (
	wsFinBit  = 0x80
	wsRSV1Bit = 0x40
	wsRSV2Bit = 0x20
	wsRSV3Bit = 0x10
	wsMaskBit = 0x80

	wsOpContinuation = 0
	wsOpText         = websocket.TextMessage
	wsOpBinary       = websocket.BinaryMessage
	wsOpClose        = websocket.CloseMessage
	wsOpPing         = websocket.PingMessage
	wsOpPong         = websocket.PongMessage

	wsMaxControlPayload = 125
	wsMaxHeader         = 10 // 2 + 8-byte length; a server frame has no masking key
)

// frameError is a frame the client must not accept: the connection ends with err, after
// a close frame with closeCode and closeText when closeCode is not 0 (as gorilla does).
type frameError struct {
	closeCode int
	closeText string
	err       error
}

func (e *frameError) Error() string { return e.err.Error() }
func (e *frameError) Unwrap() error { return e.err }

// closeMessage is the close frame payload to send, nil for none.
func (e *frameError) closeMessage() []byte {
	if e.closeCode == 0 {
		return nil
	}
	m := websocket.FormatCloseMessage(e.closeCode, e.closeText)
	if len(m) > wsMaxControlPayload {
		m = m[:wsMaxControlPayload]
	}
	return m
}

func protocolError(msg string) error {
	return &frameError{closeCode: websocket.CloseProtocolError, closeText: msg, err: errorString("websocket: " + msg)}
}

// errorString is errors.New as a comparable value type.
type errorString string

func (e errorString) Error() string { return string(e) }

// wsParser parses one connection's server frames from the bytes of successive reads.
// Between reads it holds only what must outlive a read: a partial frame (carry) and the
// fragments of a message sent in several frames (msg), each allocated when needed and
// dropped when done, so that an idle connection holds no buffer.
type wsParser struct {
	limit  int64  // largest message accepted (gorilla's read limit); > 0
	carry  []byte // the start of a frame the last read ended in; nil when none
	msg    []byte // the fragments so far of a fragmented message
	inMsg  bool   // a data frame without FIN was read: continuation frames follow
	msgLen int64  // length of msg so far
}

// What next finds.
const (
	frameNone    = iota // data is used up: the rest comes with the next read
	frameMessage        // a complete text or binary message
	framePing           // a ping, to be answered with a pong
)

// next parses the next message or ping from *data, the rest of one read (after whatever
// partial frame the previous reads left), and advances *data past it. The payload is
// valid until the next call. A non-nil error ends the connection: a *websocket.CloseError
// for a close frame (to be echoed), or a *frameError for a frame the client refuses.
//
// It is a pull parser, not a callback one, so that the poller loop calls what handles a
// message directly: the event reader it passes along then stays on its stack.
func (p *wsParser) next(data *[]byte) (kind int, payload []byte, err error) {
	// First complete the frame carried over, taking no more bytes than it needs.
	for len(p.carry) > 0 {
		hdr, total, err := p.header(p.carry)
		if err != nil {
			return frameNone, nil, err
		}
		need := total
		if need < 0 { // its header is not complete yet
			need = int64(hdr)
		}
		if have := int64(len(p.carry)); have < need {
			take := int(min(need-have, int64(len(*data))))
			if take == 0 {
				return frameNone, nil, nil
			}
			if total >= 0 && int64(cap(p.carry)) < total {
				c := make([]byte, len(p.carry), total)
				copy(c, p.carry)
				p.carry = c
			}
			p.carry = append(p.carry, (*data)[:take]...)
			*data = (*data)[take:]
			continue
		}
		f := p.carry // exactly one frame: nothing beyond need is ever taken
		p.carry = nil
		if kind, payload, err := p.frame(f, hdr); kind != frameNone || err != nil {
			return kind, payload, err
		}
	}
	for len(*data) > 0 {
		d := *data
		hdr, total, err := p.header(d)
		if err != nil {
			return frameNone, nil, err
		}
		if total < 0 || int64(len(d)) < total {
			c := 2 * wsMaxHeader
			if total > 0 {
				c = int(total)
			}
			p.carry = append(make([]byte, 0, max(c, len(d))), d...)
			*data = nil
			return frameNone, nil, nil
		}
		*data = d[total:]
		if kind, payload, err := p.frame(d[:total], hdr); kind != frameNone || err != nil {
			return kind, payload, err
		}
	}
	return frameNone, nil, nil
}

// header checks the frame header at the start of b as far as b holds it. It returns the
// header's length (as far as known: 2 until b holds two bytes) and the frame's total
// length, or -1 while b does not hold the whole header. It changes nothing, so a partial
// header may be checked again once more bytes have come.
func (p *wsParser) header(b []byte) (hdr int, total int64, err error) {
	if len(b) < 2 {
		return 2, -1, nil
	}
	b0, b1 := b[0], b[1]
	op := int(b0 & 0x0f)
	final := b0&wsFinBit != 0
	n7 := int64(b1 & 0x7f)

	// The checks of gorilla's advanceFrame, in its order, with its texts.
	var errs []string
	if b0&wsRSV1Bit != 0 {
		errs = append(errs, "RSV1 set") // no compression is negotiated
	}
	if b0&wsRSV2Bit != 0 {
		errs = append(errs, "RSV2 set")
	}
	if b0&wsRSV3Bit != 0 {
		errs = append(errs, "RSV3 set")
	}
	switch op {
	case wsOpClose, wsOpPing, wsOpPong:
		if n7 > wsMaxControlPayload {
			errs = append(errs, "len > 125 for control")
		}
		if !final {
			errs = append(errs, "FIN not set on control")
		}
	case wsOpText, wsOpBinary:
		if p.inMsg {
			errs = append(errs, "data before FIN")
		}
	case wsOpContinuation:
		if !p.inMsg {
			errs = append(errs, "continuation after FIN")
		}
	default:
		errs = append(errs, "bad opcode "+strconv.Itoa(op))
	}
	if b1&wsMaskBit != 0 {
		errs = append(errs, "bad MASK") // a server never masks
	}
	if len(errs) > 0 {
		return 0, 0, protocolError(strings.Join(errs, ", "))
	}

	var n int64
	switch n7 {
	case 126:
		hdr = 4
		if len(b) < hdr {
			return hdr, -1, nil
		}
		n = int64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		hdr = 10
		if len(b) < hdr {
			return hdr, -1, nil
		}
		u := binary.BigEndian.Uint64(b[2:])
		if u > math.MaxInt64 {
			return 0, 0, &frameError{err: websocket.ErrReadLimit}
		}
		n = int64(u)
	default:
		hdr, n = 2, n7
	}
	if op == wsOpText || op == wsOpBinary || op == wsOpContinuation {
		sofar := int64(0)
		if op == wsOpContinuation {
			sofar = p.msgLen
		}
		if n > math.MaxInt64-sofar {
			return 0, 0, &frameError{err: websocket.ErrReadLimit}
		}
		if sofar+n > p.limit {
			return 0, 0, &frameError{closeCode: websocket.CloseMessageTooBig, err: websocket.ErrReadLimit}
		}
	}
	if n > math.MaxInt-wsMaxHeader { // only where int is 32 bits
		return 0, 0, &frameError{err: websocket.ErrReadLimit}
	}
	return hdr, int64(hdr) + n, nil
}

// frame handles one complete frame f, whose header (hdr bytes) header has accepted, and
// returns what next returns for it (frameNone for a pong or a fragment).
func (p *wsParser) frame(f []byte, hdr int) (int, []byte, error) {
	op := int(f[0] & 0x0f)
	final := f[0]&wsFinBit != 0
	payload := f[hdr:]
	switch op {
	case wsOpText, wsOpBinary:
		if final {
			return frameMessage, payload, nil
		}
		p.inMsg = true
		p.msg = append([]byte(nil), payload...)
		p.msgLen = int64(len(payload))
	case wsOpContinuation:
		p.msg = append(p.msg, payload...)
		p.msgLen += int64(len(payload))
		if final {
			m := p.msg
			p.msg, p.inMsg, p.msgLen = nil, false, 0
			return frameMessage, m, nil
		}
	case wsOpPing:
		return framePing, payload, nil
	case wsOpPong:
	case wsOpClose:
		code, text := websocket.CloseNoStatusReceived, ""
		if len(payload) >= 2 {
			code = int(binary.BigEndian.Uint16(payload))
			if !validReceivedCloseCode(code) {
				return frameNone, nil, protocolError("bad close code " + strconv.Itoa(code))
			}
			text = string(payload[2:])
			if !utf8.ValidString(text) {
				return frameNone, nil, protocolError("invalid utf8 payload in close frame")
			}
		}
		return frameNone, nil, &websocket.CloseError{Code: code, Text: text}
	}
	return frameNone, nil, nil
}

// validReceivedCloseCode is gorilla's isValidReceivedCloseCode.
func validReceivedCloseCode(code int) bool {
	switch code {
	case websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseProtocolError,
		websocket.CloseUnsupportedData, websocket.CloseInvalidFramePayloadData, websocket.ClosePolicyViolation,
		websocket.CloseMessageTooBig, websocket.CloseMandatoryExtension, websocket.CloseInternalServerErr,
		websocket.CloseServiceRestart, websocket.CloseTryAgainLater:
		return true
	}
	return code >= 3000 && code <= 4999
}

// appendClientFrame appends payload as one text frame from a client: final, masked (RFC 6455
// §5.3 requires it of clients) with a key from math/rand, since the mask only guards
// intermediaries, which loopback has none of.
func appendClientFrame(dst, payload []byte) []byte {
	dst = append(dst, wsFinBit|wsOpText)
	switch n := len(payload); {
	case n <= 125:
		dst = append(dst, wsMaskBit|byte(n))
	case n <= math.MaxUint16:
		dst = append(dst, wsMaskBit|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, wsMaskBit|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	for i := range payload {
		dst[start+i] ^= key[i&3]
	}
	return dst
}
