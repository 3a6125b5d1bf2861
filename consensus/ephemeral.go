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
	gone  chan struct{} // closed when addr is no member's any more
}

// Broadcast sends msg to every other member, best effort.
func (c *Cluster) Broadcast(msg []byte) {
	cfg := c.raft.GetConfiguration()
	if cfg.Error() != nil {
		return
	}
	servers := cfg.Configuration().Servers
	c.pruneEphemeral(servers)
	for _, s := range servers {
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

// pruneEphemeral stops the senders of addresses no member has any more (a member removed, or
// moved): each holds a goroutine, a queue and a connection.
func (c *Cluster) pruneEphemeral(servers []raft.Server) {
	c.ephMu.Lock()
	defer c.ephMu.Unlock()
	if len(c.ephSenders) < len(servers) {
		return // every sender's address may still be a member's: nothing to look for
	}
	for addr, s := range c.ephSenders {
		member := false
		for _, srv := range servers {
			if string(srv.Address) == addr {
				member = true
				break
			}
		}
		if !member {
			close(s.gone)
			delete(c.ephSenders, addr)
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
	s := &ephemeralSender{addr: addr, queue: make(chan []byte, ephemeralQueue), gone: make(chan struct{})}
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
		case <-s.gone:
			return
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
