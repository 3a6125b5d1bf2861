package node

import (
	"encoding/json"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Abuse limits. Every limit is per node, keyed by account, user or source address, and
// configurable; a refusal is M_LIMIT_EXCEEDED with retry_after_ms.

// Limits configure the abuse limits (zero values take the defaults).
type Limits struct {
	LoginPerMinute     int // attempts per account and per source address
	RegisterPerHour    int // registrations per source address
	ConnsPerUser       int // WebSocket connections per user on this node
	ConnsPerIP         int // WebSocket connections per source address on this node
	RoomsPerHour       int // rooms created per user
	JoinsPerHour       int // joins per user
	MaxUnauthenticated int // WebSocket connections not yet authenticated, in total
}

func (l *Limits) defaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.LoginPerMinute, 10)
	def(&l.RegisterPerHour, 30)
	def(&l.ConnsPerUser, 50)
	def(&l.ConnsPerIP, 1000)
	def(&l.RoomsPerHour, 60)
	def(&l.JoinsPerHour, 600)
	def(&l.MaxUnauthenticated, 2000)
}

// keyedLimiter is a token bucket per key; idle buckets are forgotten so memory stays bounded.
type keyedLimiter struct {
	limit rate.Limit
	burst int
	full  time.Duration // how long an idle bucket takes to refill: then it is forgotten

	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// newKeyedLimiter allows n events per period per key (burst n).
func newKeyedLimiter(n int, period time.Duration) *keyedLimiter {
	return newRateLimiter(rate.Every(period/time.Duration(n)), n)
}

// newRateLimiter allows limit events per second per key, in bursts of burst.
func newRateLimiter(limit rate.Limit, burst int) *keyedLimiter {
	k := &keyedLimiter{limit: limit, burst: burst, buckets: map[string]*bucket{}}
	switch {
	case limit <= 0: // a bucket that never refills is never forgotten
		k.full = time.Duration(math.MaxInt64)
	case limit != rate.Inf:
		// Clamped: a slow enough rate's refill time is past Duration's range, and the
		// conversion then gave a negative one, which swept every bucket, in use or not.
		k.full = time.Duration(math.MaxInt64)
		if f := float64(burst) / float64(limit) * float64(time.Second); f < float64(math.MaxInt64) {
			k.full = time.Duration(f)
		}
	}
	return k
}

// allow takes a token for key, or says how long to wait for one.
func (k *keyedLimiter) allow(key string) (time.Duration, bool) {
	now := time.Now()
	k.mu.Lock()
	if now.Sub(k.sweep) > time.Minute {
		for key, b := range k.buckets {
			if now.Sub(b.seen) > k.full {
				delete(k.buckets, key) // refilled anyway
			}
		}
		k.sweep = now
	}
	b, ok := k.buckets[key]
	if !ok {
		b = &bucket{lim: rate.NewLimiter(k.limit, k.burst)}
		k.buckets[key] = b
	}
	b.seen = now
	k.mu.Unlock()
	// Reserved outside k.mu: the bucket's limiter has a lock of its own, and every send of
	// every user comes through here.
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// counter counts open things per key (connections per user or address).
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func newCounter() *counter { return &counter{n: map[string]int{}} }

// acquire adds one for key unless that would pass max.
func (c *counter) acquire(key string, max int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] >= max {
		return false
	}
	c.n[key]++
	return true
}

func (c *counter) release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] <= 1 {
		delete(c.n, key)
		return
	}
	c.n[key]--
}

// sourceIP is the client's address as this node sees it (no proxy headers are trusted).
func sourceIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// sourceKey is what the per-address limits count a client under: its IPv4 address, or the
// /64 network of its IPv6 address. A single IPv6 host is routinely given a whole /64 (2^64
// addresses it may send from), so counted per address those limits (registrations, logins,
// connections per address) limited nothing for it.
func sourceKey(r *http.Request) string {
	host := sourceIP(r)
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return host
	case ip.To4() != nil:
		return ip.To4().String() // also an IPv4-mapped IPv6 address
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

func writeLimited(w http.ResponseWriter, wait time.Duration, what string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Retry-After", strconv.FormatInt(int64(max((wait+time.Second-1)/time.Second, 1)), 10))
	w.WriteHeader(http.StatusTooManyRequests)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": "M_LIMIT_EXCEEDED", "message": "too many " + what,
		"retry_after_ms": max(wait.Milliseconds(), 1)})
}
