package kv

import "unsafe"

// chunkSize is the size of the blocks new entries are carved from. A block lives as long as any
// entry in it, so it is small enough that a few deleted entries pin little.
const chunkSize = 64 << 10

// arena hands out the memory of newly inserted entries: consecutive pieces of 64 KiB blocks, so
// an insert costs no allocation of its own and the garbage collector tracks a block, not every
// key. The writer alone uses it (it is not safe for concurrent use); readers only ever read
// bytes of entries published before, which the arena never writes again.
type arena struct {
	cur []byte // the block being filled: len is what was handed out
}

// alloc returns n bytes no entry uses, with cap n.
func (a *arena) alloc(n int) []byte {
	if n > chunkSize/4 {
		return make([]byte, n) // a big value gets a block of its own, freed with it
	}
	if cap(a.cur)-len(a.cur) < n {
		a.cur = make([]byte, 0, chunkSize)
	}
	off := len(a.cur)
	a.cur = a.cur[:off+n]
	return a.cur[off : off+n : off+n]
}

// free gives back p when it was the last piece handed out (nothing else can have used it since).
func (a *arena) free(p []byte) {
	if len(p) == 0 || len(a.cur) < len(p) {
		return
	}
	if unsafe.SliceData(a.cur[len(a.cur)-len(p):]) == unsafe.SliceData(p) {
		a.cur = a.cur[:len(a.cur)-len(p)]
	}
}
