package consensus

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Ephemeral signals (typing, presence) go node to node over the cluster channel, not through
// the log: losing one is harmless, delaying writes for them is not. Each peer has its own
// bounded queue and sender, so a dead peer never slows the others.

const ephemeralQueue = 1024

type ephemeralSender struct {
	addr  string
	queue chan []byte
}

// Broadcast sends msg to every other member, best effort.
func (c *Cluster) Broadcast(msg []byte) {
	cfg := c.raft.GetConfiguration()
	if cfg.Error() != nil {
		return
	}
	for _, s := range cfg.Configuration().Servers {
		if s.ID == raft.ServerID(c.opts.NodeID) {
			continue
		}
		sender := c.ephemeralSender(string(s.Address))
		if sender == nil {
			return
		}
		select {
		case sender.queue <- msg:
		default: // the peer is far behind; drop rather than block
		}
	}
}

func (c *Cluster) ephemeralSender(addr string) *ephemeralSender {
	c.ephMu.Lock()
	defer c.ephMu.Unlock()
	select {
	case <-c.stop:
		return nil
	default:
	}
	if s, ok := c.ephSenders[addr]; ok {
		return s
	}
	s := &ephemeralSender{addr: addr, queue: make(chan []byte, ephemeralQueue)}
	c.ephSenders[addr] = s
	c.wg.Add(1)
	go c.sendEphemeral(s)
	return s
}

func (c *Cluster) sendEphemeral(s *ephemeralSender) {
	defer c.wg.Done()
	fwd := &forwarder{c: c, pool: make(chan *fwdConn, 1), served: map[net.Conn]struct{}{}}
	defer fwd.close()
	for {
		select {
		case msg := <-s.queue:
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _, _ = fwd.call(ctx, s.addr, &forwardRequest{Op: "ephemeral", Batch: msg})
			cancel()
		case <-c.stop:
			return
		}
	}
}

// ephemeralState is embedded in Cluster.
type ephemeralState struct {
	ephMu      sync.Mutex
	ephSenders map[string]*ephemeralSender
}
