package consensus

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

// BenchmarkProposeParallel measures committed events per second through one single-node
// cluster with many concurrent proposers (the group commit path).
func BenchmarkProposeParallel(b *testing.B) {
	c := openSingle(b, b.TempDir(), freeAddr(b), nil)
	defer c.Close()
	room := seedRoom(b, c)
	msgs := make([]*state.Command, b.N+1)
	for i := range msgs {
		msgs[i] = message(b, room, i)
	}
	var n atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(n.Add(1))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			res, err := c.Propose(ctx, msgs[i])
			cancel()
			if err != nil || !res.OK() {
				b.Errorf("propose: %v %v", err, res.Code)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
