package consensus

import (
	"bufio"
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
)

// A voter whose data_dir was lost comes back, most often, with its config unchanged:
// cluster.peers, and cluster.bootstrap true (the default). Bootstrapping would give it the
// bootstrap configuration alone and no vote guard, so it would vote for a candidate lacking
// entries it had acknowledged (voteguard.go). So a node about to bootstrap on an empty data_dir
// with other peers first asks them (probe) whether one holds a log that goes past the bootstrap
// configuration of the same initial voters: some leader was elected, so the cluster exists. Then it does not bootstrap, and
// starts guarded, as with cluster.bootstrap false; the cluster's leader catches it up.
//
// Fresh clusters stay unguarded (a guarded process pays a goroutine hop on every Raft RPC for
// its whole life): peers that all start empty answer that they hold nothing, and a peer that
// bootstrapped a moment earlier holds only the bootstrap configuration, since no leader is
// elected without a majority. A node whose peers all fail to answer within the round bootstraps
// as before; so does one that comes back while every peer that answers lacks every entry past
// the bootstrap configuration (docs/cluster.md, "A node loses its disk").

// bootstrapProbeWait bounds the round of probes (each also ends on its own dial timeout).
const bootstrapProbeWait = 2 * time.Second

// runningPeer asks the other peers whether the cluster already runs, and returns one whose log
// goes past the bootstrap configuration, and its last index; ok is false when none answered so.
// This node answers their probes meanwhile (it holds nothing), as its forwarder does once Raft
// runs: peers starting together would otherwise each wait out the round for the others.
func (c *Cluster) runningPeer() (id string, lastIndex uint64, ok bool) {
	stopAnswering := c.answerProbesWhileStarting()
	defer stopAnswering()
	ctx, cancel := context.WithTimeout(context.Background(), bootstrapProbeWait)
	defer cancel()
	type answer struct {
		id   string
		info *probeInfo
		err  error
	}
	answers := make(chan answer, len(c.opts.Peers))
	asked := 0
	for _, p := range c.opts.Peers {
		if p.ID == c.opts.NodeID {
			continue
		}
		asked++
		go func() {
			info, err := c.askProbe(ctx, p.RaftAddr)
			answers <- answer{id: p.ID, info: info, err: err}
		}()
	}
	for range asked { // each ask ends with ctx or its dial timeout
		a := <-answers
		if a.err != nil {
			c.log.Debug("a peer did not answer whether the cluster runs", "peer", a.id, "err", a.err)
			continue
		}
		if a.info.LastIndex > 1 && !ok && c.sameInitialVoters(a.info.Bootstrap) {
			id, lastIndex, ok = a.id, a.info.LastIndex, true
			cancel() // the others need not answer
		}
	}
	return id, lastIndex, ok
}

// sameInitialVoters reports whether first, a peer's first configuration (probeInfo.Bootstrap),
// names the ids of this node's cluster.peers: a peer bootstrapped with other peers leads a
// cluster of its own, not this one (membership.go warns of it once this cluster runs). Only the
// ids count (a member may have moved since); "" (its log no longer starts there) counts as the
// same.
func (c *Cluster) sameInitialVoters(first string) bool {
	if first == "" {
		return true
	}
	var theirs, ours []string
	for _, s := range strings.Split(first, ",") {
		if at := strings.LastIndex(s, "@"); at >= 0 {
			s = s[:at]
		}
		theirs = append(theirs, s)
	}
	for _, p := range c.opts.Peers {
		ours = append(ours, p.ID)
	}
	slices.Sort(theirs)
	slices.Sort(ours)
	return slices.Equal(theirs, ours)
}

// answerProbesWhileStarting answers the probes peers send before this node's forwarder runs:
// this node holds no Raft log yet; every other request is answered "not the leader" (to be
// retried). It returns the function that stops it and waits for its goroutines.
func (c *Cluster) answerProbesWhileStarting() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	conns := c.mux.streams[streamForward].conns
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case conn := <-conns:
				wg.Add(1)
				go func() {
					defer wg.Done()
					c.answerStartingProbe(ctx, conn)
				}()
			case <-ctx.Done():
				return
			case <-c.mux.closed:
				return
			}
		}
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}

// answerStartingProbe answers one request on conn, then closes it.
func (c *Cluster) answerStartingProbe(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })()
	_ = conn.SetDeadline(time.Now().Add(bootstrapProbeWait))
	var req forwardRequest
	if _, err := readFrame(bufio.NewReader(conn), &req); err != nil {
		return
	}
	resp := &forwardResponse{Error: "not the leader", Retry: true}
	if req.Op == "probe" {
		resp = &forwardResponse{Probe: &probeInfo{NodeID: c.opts.NodeID, ClusterID: c.ident.get()}}
	}
	_ = writeFrame(conn, resp, nil)
}
