package node

import (
	"context"
	"time"

	"github.com/gorilla/websocket"
)

// minQuorumLossGrace is the shortest time a node stays out of contact with its cluster's quorum
// before it closes its clients' connections: longer than a leader election, so a failover
// does not send every client of every follower away.
const minQuorumLossGrace = 10 * time.Second

// quorumLossGrace is how long a node may be cut off from a quorum before it closes its
// clients' connections: minQuorumLossGrace, or five election timeouts if that is longer.
func quorumLossGrace(electionTimeout time.Duration) time.Duration {
	return max(minQuorumLossGrace, 5*electionTimeout)
}

// watchQuorum closes every WebSocket of this node, with 1013 (try again later), once it has
// been cut off from its cluster's quorum for grace. Such a node commits nothing, so its
// clients could neither send nor hear of anything sent elsewhere, and it cannot apply a
// logout committed meanwhile; /v1/health already says 503, and a client that reconnects is
// sent on by its load balancer, or refused here with M_UNAVAILABLE until the node is back.
func (srv *Server) watchQuorum(ctx context.Context, grace, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	var lostSince time.Time
	closed := false
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			// A node catching up after its start is in contact: it only waits for its apply.
			if srv.cluster.Healthy() || srv.cluster.CatchingUp() {
				lostSince, closed = time.Time{}, false
				continue
			}
			if lostSince.IsZero() {
				lostSince = now
			}
			if closed || now.Sub(lostSince) < grace {
				continue
			}
			closed = true
			n := srv.connCount()
			if n == 0 { // a node waiting to be added, or to form its cluster
				continue
			}
			srv.log.Warn("cut off from the cluster's quorum: closing this node's connections so clients go to another node",
				"for", now.Sub(lostSince).Round(time.Second), "connections", n)
			srv.closeConns(websocket.CloseTryAgainLater, "this node is cut off from its cluster")
		}
	}
}

func (srv *Server) connCount() int {
	srv.connMu.Lock()
	defer srv.connMu.Unlock()
	return len(srv.conns)
}
