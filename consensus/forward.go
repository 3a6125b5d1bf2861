package consensus

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

// maxForwardFrame bounds a forwarded request or answer; a batch of 512 maximal events fits.
const maxForwardFrame = 64 << 20

// forwardRequest is one call to the leader. Batch travels as the frame's payload, after the
// JSON header, as the bytes it is: no base64, no second scan.
type forwardRequest struct {
	// "apply", "ephemeral", "read_index", "join", "remove"; "probe" and "adopt_cluster_id",
	// which any node answers (membership.go)
	Op    string `json:"op"`
	Batch []byte `json:"-"`
	ID    string `json:"id,omitempty"`
	Addr  string `json:"addr,omitempty"`
	// ClusterID is the id an adopt_cluster_id gives.
	ClusterID string `json:"cluster_id,omitempty"`
	// WaitMs bounds how long the leader may take to answer a join (its wait for the joining
	// node to catch up): the forwarding follower's own deadline, less the way back.
	WaitMs int64 `json:"wait_ms,omitempty"`
}

type forwardResponse struct {
	Results []state.Result `json:"results,omitempty"`
	Index   uint64         `json:"index,omitempty"`
	Error   string         `json:"error,omitempty"`
	// Retry tells the follower the leader refused before proposing (it is no longer leader).
	Retry bool `json:"retry,omitempty"`
	// Probe is the answer to a probe.
	Probe *probeInfo `json:"probe,omitempty"`
}

// forwarder carries writes from a follower to the leader and serves those forwarded to this
// node when it leads. Connections are pooled per leader address, and bounded.
type forwarder struct {
	c    *Cluster
	pool chan *fwdConn

	mu     sync.Mutex
	served map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup

	// hungUp counts pooled connections found closed by the peer before a write went out on
	// them (peerHungUp): each a write kept from an unknown outcome.
	hungUp atomic.Int64
}

type fwdConn struct {
	addr string
	conn net.Conn
	r    *bufio.Reader
}

func newForwarder(c *Cluster) *forwarder {
	f := &forwarder{c: c, pool: make(chan *fwdConn, c.opts.MaxInflightBatches+2), served: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.accept()
	return f
}

func (f *forwarder) accept() {
	defer f.wg.Done()
	st := f.c.mux.streams[streamForward]
	for {
		conn, err := st.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			conn.Close()
			return
		}
		f.served[conn] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go f.serve(conn)
	}
}

func (f *forwarder) serve(conn net.Conn) {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		delete(f.served, conn)
		f.mu.Unlock()
		conn.Close()
	}()
	r := bufio.NewReader(conn)
	for {
		var req forwardRequest
		batch, err := readFrame(r, &req)
		if err != nil {
			return
		}
		req.Batch = batch
		resp := f.handle(&req)
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := writeFrame(conn, resp, nil); err != nil {
			return
		}
	}
}

func (f *forwarder) handle(req *forwardRequest) *forwardResponse {
	ctx, cancel := context.WithTimeout(context.Background(), f.c.opts.ApplyTimeout)
	defer cancel()
	switch req.Op {
	case "ephemeral":
		if f.c.opts.OnEphemeral != nil {
			f.c.opts.OnEphemeral(req.Batch)
		}
		return &forwardResponse{}
	case "probe": // from a leader about to add this node, or polling it; from a member that asks the id
		return &forwardResponse{Probe: f.c.probe()}
	case "adopt_cluster_id": // from the leader adding this node
		if err := f.c.adoptClusterID(req.ClusterID); err != nil {
			return &forwardResponse{Error: err.Error()}
		}
		return &forwardResponse{}
	}
	if !f.c.IsLeader() {
		return &forwardResponse{Error: "not the leader", Retry: true}
	}
	switch req.Op {
	case "apply":
		results, index, err, retry := f.c.applyLocal(ctx, req.Batch)
		if err != nil {
			return &forwardResponse{Error: err.Error(), Retry: retry}
		}
		return &forwardResponse{Results: results, Index: index}
	case "read_index":
		index, err := f.c.readIndexLocal(ctx)
		if err != nil {
			return &forwardResponse{Error: err.Error()}
		}
		return &forwardResponse{Index: index}
	case "join":
		// Answered within the follower's deadline (WaitMs), not the apply timeout: the join
		// waits for its node to catch up.
		wait := time.Duration(req.WaitMs) * time.Millisecond
		if wait <= 0 {
			wait = f.c.opts.ApplyTimeout
		}
		jctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := f.c.addVoterLocal(jctx, req.ID, req.Addr); err != nil {
			return &forwardResponse{Error: err.Error()}
		}
		return &forwardResponse{}
	case "remove":
		if err := f.c.removeLocal(req.ID); err != nil {
			return &forwardResponse{Error: err.Error()}
		}
		return &forwardResponse{}
	}
	return &forwardResponse{Error: fmt.Sprintf("unknown op %q", req.Op)}
}

// apply forwards a batch to the leader at addr. retry is true only when the leader surely did
// not propose it.
func (f *forwarder) apply(ctx context.Context, addr string, batch []byte) ([]state.Result, uint64, error, bool) {
	resp, sent, err := f.call(ctx, addr, &forwardRequest{Op: "apply", Batch: batch})
	if err != nil {
		if !sent {
			return nil, 0, err, true
		}
		return nil, 0, fmt.Errorf("consensus: forward to %s: %v: %w", addr, err, ErrUnavailable), false
	}
	if resp.Error != "" {
		if resp.Retry {
			return nil, 0, errors.New(resp.Error), true
		}
		return nil, 0, fmt.Errorf("consensus: leader: %s: %w", resp.Error, ErrUnavailable), false
	}
	return resp.Results, resp.Index, nil, false
}

// call sends one request; sent reports whether any of it may have reached the leader.
func (f *forwarder) call(ctx context.Context, addr string, req *forwardRequest) (*forwardResponse, bool, error) {
	fc, err := f.get(addr)
	if err != nil {
		return nil, false, err
	}
	_ = fc.conn.SetDeadline(deadline(ctx))
	// A cancelled ctx ends the call at once (Close cancels its callers'), not at the deadline.
	unwatch := context.AfterFunc(ctx, func() { _ = fc.conn.SetDeadline(time.Now()) })
	if err := writeFrame(fc.conn, req, req.Batch); err != nil {
		unwatch()
		fc.conn.Close()
		return nil, true, err
	}
	var resp forwardResponse
	if _, err := readFrame(fc.r, &resp); err != nil {
		unwatch()
		fc.conn.Close()
		return nil, true, err
	}
	if !unwatch() { // ctx ended meanwhile: the conn's deadline may be in the past
		fc.conn.Close()
		return &resp, true, nil
	}
	_ = fc.conn.SetDeadline(time.Time{})
	f.put(fc)
	return &resp, true, nil
}

func (f *forwarder) get(addr string) (*fwdConn, error) {
	for {
		select {
		case fc := <-f.pool:
			if fc.addr == addr && fc.r.Buffered() == 0 {
				if !peerHungUp(fc.conn) {
					return fc, nil
				}
				f.hungUp.Add(1)
			}
			// The leader moved, or its end closed (it died: a write here would count as
			// "sent", an unknown outcome, where a fresh dial fails cleanly and is retried).
			fc.conn.Close()
		default:
			conn, err := f.c.mux.dial(streamForward, addr, 2*time.Second)
			if err != nil {
				return nil, err
			}
			return &fwdConn{addr: addr, conn: conn, r: bufio.NewReader(conn)}, nil
		}
	}
}

func (f *forwarder) put(fc *fwdConn) {
	select {
	case f.pool <- fc:
	default:
		fc.conn.Close()
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	f.closed = true
	for c := range f.served {
		c.Close()
	}
	f.mu.Unlock()
	for {
		select {
		case fc := <-f.pool:
			fc.conn.Close()
			continue
		default:
		}
		break
	}
}

// wait waits for the forwarder's goroutines; the mux must be closed first.
func (f *forwarder) wait() { f.wg.Wait() }

// A frame is its length (4 bytes, big-endian), the length of its JSON header (4 bytes), the
// header, and an opaque payload filling the rest.
func writeFrame(w io.Writer, header any, payload []byte) error {
	h, err := json.Marshal(header)
	if err != nil {
		return err
	}
	n := 4 + len(h) + len(payload)
	if n > maxForwardFrame {
		return fmt.Errorf("forward frame of %d bytes is too large", n)
	}
	buf := make([]byte, 8, 8+len(h)+len(payload))
	binary.BigEndian.PutUint32(buf, uint32(n))
	binary.BigEndian.PutUint32(buf[4:], uint32(len(h)))
	buf = append(append(buf, h...), payload...)
	_, err = w.Write(buf)
	return err
}

// readFrame decodes a frame's header into header and returns its payload (nil when empty).
func readFrame(r io.Reader, header any) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 4 || n > maxForwardFrame {
		return nil, fmt.Errorf("forward frame of %d bytes is out of bounds", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	hlen := binary.BigEndian.Uint32(body)
	if hlen > n-4 {
		return nil, fmt.Errorf("forward frame header of %d bytes in a %d-byte frame", hlen, n)
	}
	if err := json.Unmarshal(body[4:4+hlen], header); err != nil {
		return nil, fmt.Errorf("forward frame header: %w", err)
	}
	if payload := body[4+hlen:]; len(payload) > 0 {
		return payload, nil
	}
	return nil, nil
}
