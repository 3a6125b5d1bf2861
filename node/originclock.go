package node

import (
	"sync/atomic"
	"time"
)

// originClock hands out the origin_ts of the events this node builds: the wall clock in
// milliseconds, except that one sender never gets the same value twice. An event's id is a
// hash of its sender, content, room head and origin_ts, so two sends of one sender with the
// same content on the same head (a pipelined "ok", "ok", or two devices at once) would
// otherwise build the same event within a millisecond. The state machine refuses such a twin
// anyway (state.CodeEventExists, which the node answers by building the send again); this keeps
// the twins a node builds itself from ever reaching it.
//
// Senders share a fixed table of slots by hash, so the clock holds no per-user state: senders
// in one slot only push each other a millisecond ahead when they send within the same one. The
// zero value is ready to use.
type originClock struct {
	slots [1024]atomic.Int64
}

// next returns max(now, the sender's slot's last value + 1) and records it.
func (c *originClock) next(sender string) int64 {
	slot := &c.slots[c.slotOf(sender)]
	for {
		last := slot.Load()
		ts := max(time.Now().UnixMilli(), last+1)
		if slot.CompareAndSwap(last, ts) {
			return ts
		}
	}
}

// slotOf is the sender's slot: FNV-1a of the user id.
func (c *originClock) slotOf(sender string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(sender); i++ {
		h = (h ^ uint32(sender[i])) * 16777619
	}
	return h % uint32(len(c.slots))
}
