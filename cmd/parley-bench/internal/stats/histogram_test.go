package stats

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
)

func TestBucketIndexContinuousAndMonotonic(t *testing.T) {
	prevIdx := -1
	// Walk bucket by bucket: each bucket's bounds map back to itself and the
	// next bucket starts right after the previous one ends.
	var next int64
	for i := 0; i < NumBuckets; i++ {
		lo, hi := BucketBounds(i)
		if lo != next {
			t.Fatalf("bucket %d starts at %d, want %d", i, lo, next)
		}
		if hi < lo {
			t.Fatalf("bucket %d: hi %d < lo %d", i, hi, lo)
		}
		if got := BucketIndex(lo); got != i {
			t.Fatalf("BucketIndex(%d) = %d, want %d", lo, got, i)
		}
		if got := BucketIndex(hi); got != i {
			t.Fatalf("BucketIndex(%d) = %d, want %d", hi, got, i)
		}
		if i <= prevIdx {
			t.Fatal("not monotonic")
		}
		prevIdx = i
		if hi == math.MaxInt64 {
			if i != NumBuckets-1 {
				t.Fatalf("MaxInt64 reached at bucket %d of %d", i, NumBuckets)
			}
			return
		}
		next = hi + 1
	}
	t.Fatalf("buckets end at %d before MaxInt64", next)
}

func TestBucketRelativeWidth(t *testing.T) {
	for i := linearMax; i < NumBuckets; i++ {
		lo, hi := BucketBounds(i)
		if w := float64(hi-lo+1) / float64(lo); w > 1.0/halfBucket+1e-12 {
			t.Fatalf("bucket %d [%d,%d] relative width %.5f", i, lo, hi, w)
		}
	}
	if BucketIndex(-5) != 0 {
		t.Fatal("negative values belong to bucket 0")
	}
}

func TestQuantilesExactForSmallValues(t *testing.T) {
	h := New()
	for v := int64(1); v <= 100; v++ {
		h.Record(v)
	}
	cases := map[float64]int64{0: 1, 0.01: 1, 0.5: 50, 0.9: 90, 0.99: 99, 0.999: 100, 1: 100}
	for q, want := range cases {
		if got := h.Quantile(q); got != want {
			t.Errorf("Quantile(%v) = %d, want %d", q, got, want)
		}
	}
	if h.Count() != 100 || h.Min() != 1 || h.Max() != 100 || h.Mean() != 50.5 {
		t.Fatalf("count/min/max/mean = %d/%d/%d/%v", h.Count(), h.Min(), h.Max(), h.Mean())
	}
}

func TestQuantilesAgainstSortedSamples(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	h := New()
	samples := make([]int64, 200000)
	for i := range samples {
		// log-normal-ish latencies between ~50µs and a few seconds, in ns
		v := int64(math.Exp(r.NormFloat64()*1.5+14) + 50000)
		samples[i] = v
		h.Record(v)
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := samples[int(math.Ceil(q*float64(len(samples))))-1]
		got := h.Quantile(q)
		if rel := math.Abs(float64(got-exact)) / float64(exact); rel > 1.0/halfBucket {
			t.Errorf("q%v: got %d exact %d (rel err %.4f)", q, got, exact, rel)
		}
		if got < exact {
			t.Errorf("q%v: %d is below the exact sample %d (should be the bucket's upper bound)", q, got, exact)
		}
	}
	if h.Max() != samples[len(samples)-1] || h.Min() != samples[0] {
		t.Fatal("min/max not exact")
	}
}

func TestEmptyHistogram(t *testing.T) {
	h := New()
	if h.Quantile(0.5) != 0 || h.Min() != 0 || h.Max() != 0 || h.Mean() != 0 || h.LogBins(10) != nil {
		t.Fatal("empty histogram should report zeros")
	}
	s := h.Summarize(1e6)
	if s.Count != 0 || s.P99 != 0 {
		t.Fatalf("summary of empty: %+v", s)
	}
}

func TestConcurrentRecordAndMerge(t *testing.T) {
	h := New()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 10000; i++ {
				h.Record(int64(g*10000 + i))
			}
		}(g)
	}
	wg.Wait()
	if h.Count() != 80000 || h.Min() != 0 || h.Max() != 79999 {
		t.Fatalf("count %d min %d max %d", h.Count(), h.Min(), h.Max())
	}
	o := New()
	o.Record(1_000_000)
	h.Merge(o)
	h.Merge(nil)
	if h.Count() != 80001 || h.Max() != 1_000_000 {
		t.Fatalf("after merge: count %d max %d", h.Count(), h.Max())
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	h := New()
	for _, v := range []int64{3, 300, 3000, 3_000_000, 3_000_000_000} {
		h.Record(v)
	}
	b, err := json.Marshal(h.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	g := New()
	g.Record(7)
	g.MergeSnapshot(s)
	g.MergeSnapshot(Snapshot{Count: 1, Buckets: [][2]int64{{-1, 5}, {NumBuckets, 5}}}) // ignored
	if g.Count() != 6 || g.Min() != 3 || g.Max() != 3_000_000_000 {
		t.Fatalf("count %d min %d max %d", g.Count(), g.Min(), g.Max())
	}
	if m := g.Quantile(0.5); m < 300 || m > 301 { // 300's bucket is [300,301]
		t.Fatalf("median %d", g.Quantile(0.5))
	}
	if got, want := g.Mean(), float64(3+300+3000+3_000_000+3_000_000_000+7)/6; got != want {
		t.Fatalf("mean %v want %v", got, want)
	}
}

func TestLogBins(t *testing.T) {
	h := New()
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 50000; i++ {
		h.Record(int64(r.ExpFloat64()*2e6) + 100_000)
	}
	bins := h.LogBins(30)
	if len(bins) == 0 || len(bins) > 30 {
		t.Fatalf("%d bins", len(bins))
	}
	var total int64
	for i, b := range bins {
		total += b.Count
		if b.Hi < b.Lo {
			t.Fatalf("bin %d: %+v", i, b)
		}
		if i > 0 && b.Lo != bins[i-1].Hi+1 {
			t.Fatalf("bins %d and %d not adjacent: %+v %+v", i-1, i, bins[i-1], b)
		}
		if i > 0 && i < len(bins)-1 {
			// log spacing: each bin is wider than (or as wide as) the previous one, modulo rounding
			if (b.Hi - b.Lo + 2) < (bins[i-1].Hi-bins[i-1].Lo)*9/10 {
				t.Fatalf("bin %d narrower than bin %d: %+v %+v", i, i-1, b, bins[i-1])
			}
		}
	}
	if total != h.Count() {
		t.Fatalf("bins hold %d samples, histogram %d", total, h.Count())
	}
	if bins[0].Lo != h.Min() || bins[len(bins)-1].Hi != h.Max() {
		t.Fatalf("bins span [%d,%d], samples [%d,%d]", bins[0].Lo, bins[len(bins)-1].Hi, h.Min(), h.Max())
	}
}

func TestLogBinsDegenerate(t *testing.T) {
	h := New()
	h.Record(42)
	h.Record(42)
	if b := h.LogBins(10); len(b) != 1 || b[0] != (Bin{Lo: 42, Hi: 42, Count: 2}) {
		t.Fatalf("single-value bins: %+v", b)
	}
	h.Record(0)
	h.Record(3)
	b := h.LogBins(50) // tiny integer range: edges collapse
	var total int64
	for _, x := range b {
		total += x.Count
	}
	if total != 4 || len(b) > 43 {
		t.Fatalf("bins %+v", b)
	}
}

func TestSummarize(t *testing.T) {
	h := New()
	for i := 1; i <= 1000; i++ {
		h.Record(int64(i) * 1_000_000) // 1..1000 ms in ns
	}
	s := h.Summarize(1e6)
	if s.Count != 1000 || s.Min != 1 || s.Max != 1000 {
		t.Fatalf("%+v", s)
	}
	near := func(got, want float64) bool { return math.Abs(got-want)/want <= 1.0/halfBucket }
	if !near(s.P50, 500) || !near(s.P90, 900) || !near(s.P99, 990) || !near(s.P999, 999) || !near(s.Mean, 500.5) {
		t.Fatalf("%+v", s)
	}
}
