package node

import (
	"encoding/binary"
	"sync"
)

// The node writes its WebSocket frames itself: a pushed event is framed once and the same
// bytes go to every receiver, and everything queued for one connection leaves in a single
// write. (gorilla/websocket still reads frames; it would flush every message on its own.)

const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

// frame is one complete server-to-client frame on the wire; immutable once built.
type frame []byte

// newFrame builds an unmasked, final frame with the given opcode.
func newFrame(opcode byte, payload []byte) frame {
	f := appendFrameHeader(make([]byte, 0, frameHeaderLen(len(payload))+len(payload)), opcode, len(payload))
	return append(f, payload...)
}

// frameHeaderLen is the length of the header of a frame with an n-byte payload.
func frameHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xFFFF:
		return 4
	default:
		return 10
	}
}

// appendFrameHeader appends the header of a final, unmasked frame with an n-byte payload.
func appendFrameHeader(f []byte, opcode byte, n int) []byte {
	f = append(f, 0x80|opcode)
	switch {
	case n < 126:
		return append(f, byte(n))
	case n <= 0xFFFF:
		return binary.BigEndian.AppendUint16(append(f, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(f, 127), uint64(n))
	}
}

func textFrame(payload []byte) frame { return newFrame(opText, payload) }

func closeFrame(code int, reason string) frame {
	p := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(p, uint16(code))
	copy(p[2:], reason)
	return newFrame(opClose, p)
}

// writeBufs pools the buffers a connection's queued frames are gathered into, so an idle
// connection holds no write buffer at all.
var writeBufs = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}
