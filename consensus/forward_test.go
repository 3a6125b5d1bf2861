package consensus

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

func TestForwardFramesCarryTheBatchAsIs(t *testing.T) {
	var wire bytes.Buffer
	batch := []byte(`[{"op":"event","raw":"\u00e9\\"}]` + "\x00\xff")
	for _, req := range []*forwardRequest{
		{Op: "apply", Batch: batch},
		{Op: "join", ID: "n4", Addr: "127.0.0.1:7004"},
		{Op: "read_index"},
	} {
		if err := writeFrame(&wire, req, req.Batch); err != nil {
			t.Fatal(err)
		}
	}
	resp := &forwardResponse{Results: []state.Result{{EventID: "$a", RoomID: "!r:o", StreamPos: 7, Index: 9}, {Code: "M_FORBIDDEN", Message: "no"}}, Index: 9}
	if err := writeFrame(&wire, resp, nil); err != nil {
		t.Fatal(err)
	}
	// The batch's bytes are on the wire unencoded.
	if !bytes.Contains(wire.Bytes(), batch) {
		t.Fatal("the batch was re-encoded on the wire")
	}
	r := bufio.NewReader(&wire)
	for _, want := range []forwardRequest{{Op: "apply", Batch: batch}, {Op: "join", ID: "n4", Addr: "127.0.0.1:7004"}, {Op: "read_index"}} {
		var got forwardRequest
		payload, err := readFrame(r, &got)
		if err != nil {
			t.Fatal(err)
		}
		got.Batch = payload
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("read %+v, want %+v", got, want)
		}
	}
	var got forwardResponse
	if payload, err := readFrame(r, &got); err != nil || payload != nil || !reflect.DeepEqual(&got, resp) {
		t.Fatalf("read %+v, payload %q (%v), want %+v", got, payload, err, resp)
	}
}

func frameOf(total, header uint32, rest string) []byte {
	b := binary.BigEndian.AppendUint32(nil, total)
	b = binary.BigEndian.AppendUint32(b, header)
	return append(b, rest...)
}

// forwardFrameSeeds are frames a broken or hostile peer on the cluster port could send.
var forwardFrameSeeds = [][]byte{
	frameOf(4+13, 13, `{"op":"apply"}`[:13]),
	frameOf(4+14+3, 14, `{"op":"apply"}abc`),
	frameOf(3, 0, ""),
	frameOf(4, 0, ""),
	frameOf(4+2, 100, "{}"),
	frameOf(4+2, 0xffffffff, "{}"),
	frameOf(maxForwardFrame+1, 2, "{}"),
	frameOf(4+5, 5, "[1,2]"),
	frameOf(4+2, 2, "{}")[:7],
	{0, 0},
}

func TestForwardFramesRefuseMalformedInput(t *testing.T) {
	for i, frame := range forwardFrameSeeds {
		var req forwardRequest
		_, err := readFrame(bytes.NewReader(frame), &req)
		if i == 1 {
			if err != nil {
				t.Errorf("seed %d: a valid frame was refused: %v", i, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("seed %d (%q): accepted", i, frame)
		}
	}
}

// FuzzReadFrame: no frame crashes the reader, and whatever it accepts writes back the same.
func FuzzReadFrame(f *testing.F) {
	for _, s := range forwardFrameSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		var req forwardRequest
		payload, err := readFrame(bytes.NewReader(frame), &req)
		if err != nil {
			return
		}
		var again bytes.Buffer
		if err := writeFrame(&again, &req, payload); err != nil {
			t.Fatalf("accepted frame does not write back: %v", err)
		}
		var req2 forwardRequest
		payload2, err := readFrame(&again, &req2)
		if err != nil || !bytes.Equal(payload, payload2) || !reflect.DeepEqual(req, req2) {
			t.Fatalf("round trip changed %+v %q into %+v %q (%v)", req, payload, req2, payload2, err)
		}
	})
}

// A forwarded call whose ctx is cancelled ends at once, not at its deadline (5 s without one):
// Close cancels the start-up catch-up's read index this way.
func TestAForwardedCallEndsWhenItsContextDoes(t *testing.T) {
	ours, leader := net.Pipe() // a leader that never reads nor answers
	defer leader.Close()
	f := &forwarder{pool: make(chan *fwdConn, 1)}
	f.pool <- &fwdConn{addr: "leader", conn: ours, r: bufio.NewReader(ours)}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, _, err := f.call(ctx, "leader", &forwardRequest{Op: "read_index"})
	if err == nil {
		t.Fatal("a call nobody answered succeeded")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("the call ended %v after its context was cancelled", took)
	}
	if len(f.pool) != 0 {
		t.Fatal("a connection whose call failed went back to the pool")
	}
}

// A follower keeps its connection to the leader open between forwards. When the leader dies,
// a write that reaches the follower before it notices finds that connection closed by the
// dead leader's host: the leader surely never read it, so the write waits for the next leader
// (docs/cluster.md, "The leader dies") instead of failing with an unknown outcome. Unix only
// (connalive_other.go).
func TestAWriteForwardedToADeadLeaderWaitsForTheNext(t *testing.T) {
	cs := openThree(t, "s3cret")
	leader := waitLeader(t, cs...)
	follower := followersOf(leader, cs)[0]
	room := seedRoom(t, follower) // forwarded: the follower now holds an open connection to the leader
	propose(t, follower, message(t, room, 0))
	leader.Close()                                   // the follower notices only after its heartbeat timeout, 150 ms from now
	res := propose(t, follower, message(t, room, 1)) // fails the test on ErrUnavailable
	if _, ok := follower.Store().Event(res.EventID); !ok {
		t.Fatal("the write's event is not readable on the follower that accepted it")
	}
	// The write went to the dead leader's address and found its pooled connection closed: had
	// the follower noticed the death first (a slow machine), the write would not have tried it.
	if n := follower.fwd.hungUp.Load(); n < 1 {
		t.Fatalf("no pooled connection was found closed by the dead leader (%d): the write did not try it", n)
	}
}
