package node

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// Receivers other than the sender get the stored JSON without unsigned.txn_id; cutting it off
// the end must give exactly what encoding the event without it gives, whatever the txn_id holds.
func TestPublicJSONIsTheEventWithoutTxnID(t *testing.T) {
	publicJSON := func(stored []byte, e *event.Event) []byte {
		head, tail := publicParts(stored, e)
		return append(append([]byte(nil), head...), tail...)
	}
	for _, txn := range []string{"t1", `q"uo\te<&>`, "\u2028 \xff", ""} {
		e := &event.Event{EventID: "$e", RoomID: "!r:acme.test", Sender: "@a:acme.test", Origin: "acme.test",
			Type: "m.room.message", Content: json.RawMessage(`{"body":"hi","msgtype":"m.text"}`),
			PrevEvents: []string{}, StreamPos: 7}
		if txn != "" {
			e.Unsigned = &event.Unsigned{TxnID: txn}
		}
		stored, err := e.AppendJSON(nil)
		if err != nil {
			t.Fatal(err)
		}
		c := *e
		c.Unsigned = nil
		want, _ := c.AppendJSON(nil)
		if got := publicJSON(stored, e); string(got) != string(want) {
			t.Errorf("txn %q: public JSON\n%s\nwant\n%s", txn, got, want)
		}
		if txn != "" && string(publicJSON(stored, e)) == string(stored) {
			t.Errorf("txn %q: the txn_id was not removed", txn)
		}
	}
	// Something else in unsigned: encoded again, txn_id still left out.
	e := &event.Event{EventID: "$e", Content: json.RawMessage(`{}`),
		Unsigned: &event.Unsigned{TxnID: "t", RedactedBecause: &event.Event{EventID: "$r", Content: json.RawMessage(`{}`)}}}
	stored, _ := e.AppendJSON(nil)
	var got map[string]any
	if err := json.Unmarshal(publicJSON(stored, e), &got); err != nil || got["unsigned"] != nil {
		t.Fatalf("redacted_because case: %s (%v)", publicJSON(stored, e), err)
	}
}

// unframe checks f is one final, unmasked text frame and returns its payload.
func unframe(t *testing.T, f frame) []byte {
	t.Helper()
	if len(f) < 2 || f[0] != 0x80|opText || f[1]&0x80 != 0 {
		t.Fatalf("frame header % x", f[:min(len(f), 2)])
	}
	n, h := int(f[1]), 2
	switch n {
	case 126:
		n, h = int(binary.BigEndian.Uint16(f[2:])), 4
	case 127:
		n, h = int(binary.BigEndian.Uint64(f[2:])), 10
	}
	if len(f) != h+n {
		t.Fatalf("frame of %d bytes says its payload is %d after a %d-byte header", len(f), n, h)
	}
	return f[h:]
}

// TestEventFramesAtEveryHeaderSize: the one-allocation push frame has the right length header
// on both sides of the 126 and 65,536 byte boundaries.
func TestEventFramesAtEveryHeaderSize(t *testing.T) {
	overhead := len(eventPrefix) + len(eventSuffix)
	for _, n := range []int{0, 125, 126, 127, 65535, 65536, 70000} {
		if n < overhead {
			continue
		}
		body := bytes.Repeat([]byte("x"), n-overhead)
		half := len(body) / 2
		got := unframe(t, eventFrame(body[:half], body[half:]))
		if want := eventPrefix + string(body) + eventSuffix; string(got) != want {
			t.Fatalf("payload of %d bytes came out as %d bytes", len(want), len(got))
		}
	}
}

// TestEventPushBuildsEachVariantOnNeed: the sender's sessions get the stored JSON with its
// txn_id, others the public JSON; a variant nobody on this node needs is never built, and an
// event without a txn_id is framed once for everyone.
func TestEventPushBuildsEachVariantOnNeed(t *testing.T) {
	e := &event.Event{EventID: "$e", RoomID: "!r:acme.test", Sender: "@a:acme.test", Origin: "acme.test",
		Type: "m.room.message", Content: json.RawMessage(`{"body":"hi","msgtype":"m.text"}`),
		PrevEvents: []string{}, StreamPos: 7, Unsigned: &event.Unsigned{TxnID: "t1"}}
	stored, err := e.AppendJSON(nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &eventPush{stored: stored, e: e}
	var public struct {
		Event map[string]any `json:"event"`
	}
	if err := json.Unmarshal(unframe(t, p.frameFor("@b:acme.test")), &public); err != nil || public.Event["event_id"] != "$e" {
		t.Fatalf("public push %+v (%v)", public, err)
	}
	if public.Event["unsigned"] != nil {
		t.Fatalf("another user's push carries unsigned %v", public.Event["unsigned"])
	}
	if p.own != nil {
		t.Fatal("the sender's variant was built with none of the sender's sessions pushed to")
	}
	if got := unframe(t, p.frameFor(e.Sender)); string(got) != eventPrefix+string(stored)+eventSuffix {
		t.Fatalf("the sender's push is %s", got)
	}
	e.Unsigned = nil
	stored, _ = e.AppendJSON(nil)
	p = &eventPush{stored: stored, e: e}
	if a, b := p.frameFor("@b:acme.test"), p.frameFor(e.Sender); &a[0] != &b[0] {
		t.Fatal("an event without a txn_id was framed twice")
	}
}

// TestAStateReplacedByASnapshotClosesEverySession: when the leader's snapshot replaces a
// node's state, the events and logouts in between were never pushed one by one, so every
// session is closed with 1012 and its client reconnects and syncs from its position.
func TestAStateReplacedByASnapshotClosesEverySession(t *testing.T) {
	n := startNode(t, nil)
	_, alice := n.register("alice")
	_, bob := n.register("bob")
	a, b := n.dial(alice), n.dial(bob)
	for _, c := range []*client{a, b} {
		c.ok(map[string]any{"op": "ping"}) // answered from the read loop: in the hub by then
	}
	n.srv.hub.applied(&state.Applied{Restored: true})
	for _, c := range []*client{a, b} {
		if code := waitClosed(t, c); code != 1012 {
			t.Fatalf("session closed with %d after the state was replaced, want 1012", code)
		}
	}
	n.dial(alice).ok(map[string]any{"op": "ping"}) // and the client comes back
}

// TestASweepBeforeASessionJoinsTheHubStillReachesIt: a logout of the session's token, or a
// snapshot install, applied after the token was looked up but before the session joined the hub
// swept the hub without it; the session looks again once it is in and is closed all the same.
func TestASweepBeforeASessionJoinsTheHubStillReachesIt(t *testing.T) {
	n := startNode(t, nil)
	onNextSession := func(sweep func(s *session)) {
		var once atomic.Bool
		hook := func(s *session) {
			if once.CompareAndSwap(false, true) {
				sweep(s)
				time.Sleep(100 * time.Millisecond) // for the hub's dispatcher to sweep
			}
		}
		n.srv.beforeHubAdd.Store(&hook)
	}
	t.Run("logout", func(t *testing.T) {
		_, tok := n.register("")
		onNextSession(func(s *session) {
			if _, oerr := n.srv.commit(&state.Command{Kind: state.KindLogout, Logout: &state.Logout{TokenHash: s.tokenHash}}); oerr != nil {
				t.Errorf("logout: %v", oerr)
			}
		})
		if code := waitClosed(t, n.dial(tok)); code != closeAuth {
			t.Fatalf("closed with %d, want %d (token revoked)", code, closeAuth)
		}
	})
	t.Run("snapshot installed, token in the URL", func(t *testing.T) {
		_, tok := n.register("")
		onNextSession(func(*session) { n.srv.hub.applied(&state.Applied{Restored: true}) })
		conn, _, err := websocket.DefaultDialer.Dial("ws://"+n.addr+"/v1/ws?access_token="+tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		if code := waitClosed(t, newClient(t, conn)); code != closeResync {
			t.Fatalf("closed with %d, want %d (resync)", code, closeResync)
		}
	})
}
