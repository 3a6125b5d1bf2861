package node

import (
	"sync"
	"testing"
	"time"
)

// One sender never gets an origin_ts twice, from any number of goroutines at once, and the
// values stay at the wall clock unless a sender asks more than once a millisecond.
func TestOriginClockNeverRepeatsForASender(t *testing.T) {
	var c originClock
	const goroutines, each = 8, 500
	start := time.Now().UnixMilli()
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				ts := c.next("@alice:acme.test")
				mu.Lock()
				if seen[ts] {
					t.Errorf("origin_ts %d handed out twice", ts)
				}
				seen[ts] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// Another sender (in another slot) is not pushed ahead by alice's burst.
	if ts := c.next("@bob:acme.test"); ts > time.Now().UnixMilli() && c.slotOf("@bob:acme.test") != c.slotOf("@alice:acme.test") {
		t.Errorf("bob's origin_ts %d is ahead of the clock", ts)
	}
	if first := c.next("@carol:acme.test"); first < start {
		t.Errorf("origin_ts %d is before the test started (%d)", first, start)
	}
}
