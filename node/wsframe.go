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
	n := len(payload)
	var hdr [10]byte
	hdr[0] = 0x80 | opcode
	h := 2
	switch {
	case n < 126:
		hdr[1] = byte(n)
	case n <= 0xFFFF:
		hdr[1] = 126
		binary.BigEndian.PutUint16(hdr[2:], uint16(n))
		h = 4
	default:
		hdr[1] = 127
		binary.BigEndian.PutUint64(hdr[2:], uint64(n))
		h = 10
	}
	f := make([]byte, h+n)
	copy(f, hdr[:h])
	copy(f[h:], payload)
	return f
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
