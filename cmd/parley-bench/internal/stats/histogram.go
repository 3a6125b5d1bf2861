// Package stats holds the measurement primitives of parley-bench: a
// lock-free, HDR-like log-bucket histogram for latencies (and any other
// non-negative integer samples) with percentiles, merging, a compact JSON
// snapshot, and coarse log-spaced bins for drawing.
package stats

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// subBits sets the precision: values below 2^subBits are counted exactly;
// above, each power-of-two range is split into 2^(subBits-1) equal
// sub-buckets, so a bucket is at most 1/128 (0.8 %) of its value wide.
const subBits = 8

const (
	linearMax  = 1 << subBits       // 256: values [0,256) have their own bucket
	halfBucket = 1 << (subBits - 1) // 128 sub-buckets per power of two above
	// NumBuckets is the number of buckets covering [0, MaxInt64].
	NumBuckets = (63-subBits)*halfBucket + linearMax
)

// BucketIndex returns the bucket a value falls in. Negative values count as 0.
func BucketIndex(v int64) int {
	if v < linearMax {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	l := bits.Len64(uint64(v)) // >= subBits+1
	shift := l - subBits       // >= 1
	top := uint64(v) >> uint(shift)
	// top is in [halfBucket, 2*halfBucket)
	return shift*halfBucket + int(top)
}

// BucketBounds returns the smallest and largest value counted in bucket i.
func BucketBounds(i int) (lo, hi int64) {
	if i < linearMax {
		return int64(i), int64(i)
	}
	shift := i/halfBucket - 1
	top := int64(i%halfBucket + halfBucket)
	lo = top << uint(shift)
	hi = lo + (int64(1) << uint(shift)) - 1
	if hi < lo { // overflow in the very last bucket
		hi = math.MaxInt64
	}
	return lo, hi
}

// Histogram counts samples into log buckets. All methods are safe for
// concurrent use; Record is lock-free (a few atomic operations).
// The zero value is not usable: call New.
type Histogram struct {
	counts []atomic.Int64
	count  atomic.Int64
	sum    atomic.Int64
	min    atomic.Int64
	max    atomic.Int64
}

// New returns an empty histogram.
func New() *Histogram {
	h := &Histogram{counts: make([]atomic.Int64, NumBuckets)}
	h.min.Store(math.MaxInt64)
	h.max.Store(math.MinInt64)
	return h
}

// Record adds one sample. Negative samples are recorded as 0.
func (h *Histogram) Record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[BucketIndex(v)].Add(1)
	h.count.Add(1)
	h.sum.Add(v)
	for {
		m := h.min.Load()
		if v >= m || h.min.CompareAndSwap(m, v) {
			break
		}
	}
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// Count is the number of samples recorded.
func (h *Histogram) Count() int64 { return h.count.Load() }

// Min is the smallest sample, 0 when empty.
func (h *Histogram) Min() int64 {
	if h.Count() == 0 {
		return 0
	}
	return h.min.Load()
}

// Max is the largest sample, 0 when empty.
func (h *Histogram) Max() int64 {
	if h.Count() == 0 {
		return 0
	}
	return h.max.Load()
}

// Mean is the exact arithmetic mean, 0 when empty.
func (h *Histogram) Mean() float64 {
	n := h.Count()
	if n == 0 {
		return 0
	}
	return float64(h.sum.Load()) / float64(n)
}

// Quantile returns the value at quantile q in [0,1]: the upper bound of the
// bucket holding the sample of rank ceil(q*count), clamped to the observed
// min and max (so Quantile(1) is the exact maximum and Quantile(0) the
// exact minimum). It returns 0 when empty.
func (h *Histogram) Quantile(q float64) int64 {
	n := h.Count()
	if n == 0 {
		return 0
	}
	if q <= 0 {
		return h.Min()
	}
	if q >= 1 {
		return h.Max()
	}
	rank := int64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var cum int64
	for i := range h.counts {
		c := h.counts[i].Load()
		if c == 0 {
			continue
		}
		cum += c
		if cum >= rank {
			_, hi := BucketBounds(i)
			return clamp(hi, h.Min(), h.Max())
		}
	}
	// Concurrent Records can make count run ahead of the buckets.
	return h.Max()
}

func clamp(v, lo, hi int64) int64 {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}

// Merge adds every sample of o into h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.Count() == 0 {
		return
	}
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
	h.count.Add(o.count.Load())
	h.sum.Add(o.sum.Load())
	h.mergeMinMax(o.min.Load(), o.max.Load())
}

func (h *Histogram) mergeMinMax(mn, mx int64) {
	for {
		m := h.min.Load()
		if mn >= m || h.min.CompareAndSwap(m, mn) {
			break
		}
	}
	for {
		m := h.max.Load()
		if mx <= m || h.max.CompareAndSwap(m, mx) {
			break
		}
	}
}

// Snapshot is a compact, JSON-friendly copy of a histogram: only non-empty
// buckets are listed, as [index, count] pairs. It is what child processes
// send to their parent.
type Snapshot struct {
	Count   int64      `json:"count"`
	Sum     int64      `json:"sum"`
	Min     int64      `json:"min"`
	Max     int64      `json:"max"`
	Buckets [][2]int64 `json:"buckets,omitempty"`
}

// Snapshot copies the histogram.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Count: h.Count(), Sum: h.sum.Load(), Min: h.Min(), Max: h.Max()}
	for i := range h.counts {
		if c := h.counts[i].Load(); c != 0 {
			s.Buckets = append(s.Buckets, [2]int64{int64(i), c})
		}
	}
	return s
}

// MergeSnapshot adds a snapshot's samples into h. Out-of-range bucket
// indexes are ignored.
func (h *Histogram) MergeSnapshot(s Snapshot) {
	if s.Count == 0 {
		return
	}
	var n int64
	for _, b := range s.Buckets {
		if b[0] < 0 || b[0] >= NumBuckets || b[1] <= 0 {
			continue
		}
		h.counts[b[0]].Add(b[1])
		n += b[1]
	}
	if n == 0 {
		return
	}
	h.count.Add(n)
	h.sum.Add(s.Sum)
	h.mergeMinMax(s.Min, s.Max)
}

// Bin is one bar of a drawn histogram: samples in [Lo, Hi].
type Bin struct {
	Lo    int64 `json:"lo"`
	Hi    int64 `json:"hi"`
	Count int64 `json:"count"`
}

// LogBins groups the samples into at most n bins whose edges are spaced
// evenly on a log scale from Min to Max. Every sample lands in exactly one
// bin (a fine bucket is assigned by its midpoint), so the counts add up to
// Count. Empty histogram: nil.
func (h *Histogram) LogBins(n int) []Bin {
	total := h.Count()
	if total == 0 || n <= 0 {
		return nil
	}
	mn, mx := h.Min(), h.Max()
	if mn == mx || n == 1 {
		return []Bin{{Lo: mn, Hi: mx, Count: total}}
	}
	lo := float64(mn)
	if lo < 1 {
		lo = 1
	}
	hi := float64(mx)
	if hi <= lo {
		hi = lo + 1
	}
	ratio := math.Log(hi / lo)
	edges := make([]int64, n+1) // bin k covers [edges[k], edges[k+1])
	edges[0] = mn
	for k := 1; k < n; k++ {
		edges[k] = int64(math.Round(lo * math.Exp(ratio*float64(k)/float64(n))))
	}
	edges[n] = mx + 1
	// De-duplicate edges that rounding made equal (small integer ranges).
	uniq := edges[:1]
	for _, e := range edges[1:] {
		if e > uniq[len(uniq)-1] {
			uniq = append(uniq, e)
		}
	}
	edges = uniq
	bins := make([]Bin, len(edges)-1)
	for k := range bins {
		bins[k] = Bin{Lo: edges[k], Hi: edges[k+1] - 1}
	}
	k := 0
	for i := range h.counts {
		c := h.counts[i].Load()
		if c == 0 {
			continue
		}
		blo, bhi := BucketBounds(i)
		mid := clamp(blo+(bhi-blo)/2, mn, mx)
		for k < len(bins)-1 && mid > bins[k].Hi {
			k++
		}
		bins[k].Count += c
	}
	return bins
}

// Summary is the usual digest of a histogram, each value divided by the
// unit it was made with (e.g. 1e6 for nanoseconds → milliseconds).
type Summary struct {
	Count int64   `json:"count"`
	Min   float64 `json:"min"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

// Summarize digests the histogram, dividing every value by unit (> 0).
func (h *Histogram) Summarize(unit float64) Summary {
	if unit <= 0 {
		unit = 1
	}
	f := func(v int64) float64 { return float64(v) / unit }
	return Summary{
		Count: h.Count(),
		Min:   f(h.Min()),
		Mean:  h.Mean() / unit,
		P50:   f(h.Quantile(0.50)),
		P90:   f(h.Quantile(0.90)),
		P99:   f(h.Quantile(0.99)),
		P999:  f(h.Quantile(0.999)),
		Max:   f(h.Max()),
	}
}
