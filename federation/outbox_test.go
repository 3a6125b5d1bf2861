package federation

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/node/content"
)

// Events are stored unsigned and signed as they leave the org: an own event goes out with a
// signature the receiving org accepts (also on the redaction carried with it, and after the
// event itself was redacted), the same bytes from every node; another org's event goes out
// with exactly its origin's signature.
func TestOutgoingPDUSignsOwnEvents(t *testing.T) {
	a, c := newFuzzPeer(t), newFuzzPeer(t)
	s := &Service{opts: Options{Org: "a.test", Keys: &Keys{file: a.key}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}

	own := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test", msg("hi"))
	own.Signatures = nil // as the node stores it
	own.StreamPos = 9
	own.Unsigned = &event.Unsigned{TxnID: "t1"}
	out, err := s.outgoingPDU(own)
	if err != nil {
		t.Fatal(err)
	}
	if err := event.VerifySignature(out, "a.test", "ed25519:"+a.key.KeyID, a.peer.Public); err != nil {
		t.Fatalf("own event: %v", err)
	}
	if len(out.Signatures["a.test"]) != 1 {
		t.Fatalf("own event signed as %v, want one signature under the key id ed25519:%s", out.Signatures, a.key.KeyID)
	}
	if out.StreamPos != 0 || out.Unsigned != nil {
		t.Fatalf("local fields left on the wire: %+v", out)
	}
	if own.Signatures != nil {
		t.Fatal("the stored event was changed")
	}
	again, _ := s.outgoingPDU(own)
	if again.Signatures["a.test"]["ed25519:"+a.key.KeyID] != out.Signatures["a.test"]["ed25519:"+a.key.KeyID] {
		t.Fatal("signing the same event twice gave different signatures")
	}

	// Redacted, with its redaction under unsigned: both verify.
	redaction := backfillEvent(t, a, "a.test", "m.room.redaction", "@alice:a.test", `{}`, own.EventID)
	redaction.Signatures = nil
	redacted := own.Clone()
	redacted.Content = []byte(`{}`)
	redacted.Unsigned = &event.Unsigned{RedactedBecause: redaction}
	out, err = s.outgoingPDU(redacted)
	if err != nil {
		t.Fatal(err)
	}
	if err := event.VerifySignature(out, "a.test", "ed25519:"+a.key.KeyID, a.peer.Public); err != nil {
		t.Fatalf("redacted event: %v", err)
	}
	if err := event.VerifySignature(out.Unsigned.RedactedBecause, "a.test", "ed25519:"+a.key.KeyID, a.peer.Public); err != nil {
		t.Fatalf("redaction: %v", err)
	}

	// Another org's event keeps exactly its origin's signature.
	foreign := backfillEvent(t, c, "c.test", "m.room.message", "@carol:c.test", msg("hello"))
	out, _ = s.outgoingPDU(foreign)
	if len(out.Signatures) != 1 || out.Signatures["c.test"]["ed25519:"+c.key.KeyID] != foreign.Signatures["c.test"]["ed25519:"+c.key.KeyID] {
		t.Fatalf("foreign event signatures changed: %v", out.Signatures)
	}
}

// EDU transactions to one destination leave in the order they were made, even when publishes
// take varying time, and the goroutine that publishes them ends once none are left: a user's
// "offline" published before the "online" made just before it would be lost on the peer.
func TestEDUsToOneDestinationLeaveInOrder(t *testing.T) {
	a := newFuzzPeer(t)
	var mu sync.Mutex
	published := map[string][]string{}
	s := &Service{opts: Options{Org: "a.test", Keys: &Keys{file: a.key}},
		log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		eduSlots: make(chan struct{}, 64), eduQueues: map[string]*eduQueue{}}
	rng := rand.New(rand.NewSource(1))
	var rngMu sync.Mutex
	s.eduPublish = func(dest, _ string, body []byte) error {
		rngMu.Lock()
		d := time.Duration(rng.Intn(3000)) * time.Microsecond
		rngMu.Unlock()
		time.Sleep(d)
		var txn Transaction
		if err := json.Unmarshal(body, &txn); err != nil {
			return err
		}
		mu.Lock()
		published[dest] = append(published[dest], string(txn.EDUs[0].Content))
		mu.Unlock()
		return nil
	}
	const perDest = 30
	var want []string
	for i := range perDest {
		content := fmt.Sprintf(`{"user_id":"@u:a.test","presence":"n%d"}`, i)
		want = append(want, content)
		for _, dest := range []string{"b.test", "c.test"} {
			s.sendEDU(dest, EDU{Type: "m.presence", Content: json.RawMessage(content)})
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		done := len(published["b.test"]) == perDest && len(published["c.test"]) == perDest
		mu.Unlock()
		s.eduMu.Lock()
		idle := !s.eduQueues["b.test"].draining && !s.eduQueues["c.test"].draining
		s.eduMu.Unlock()
		if done && idle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("published %d and %d of %d; draining goroutines idle: %v", len(published["b.test"]), len(published["c.test"]), perDest, idle)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, dest := range []string{"b.test", "c.test"} {
		if fmt.Sprint(published[dest]) != fmt.Sprint(want) {
			t.Fatalf("%s got the EDUs out of order:\n%v", dest, published[dest])
		}
	}
	if n := len(s.eduSlots); n != 0 {
		t.Fatalf("%d EDU slots still taken", n)
	}
}

// TestTxnBatchesStayUnderTheLimit: events of the largest content the client rules allow, also
// content that encoding/json escapes to six times its size, are relayed in transactions the
// receiver accepts (at most MaxMessageBytes), each with at least one event, all of them in
// order. Until 2026-12-07 only the event count bounded a transaction: 22 messages of 48 KiB made
// one the receiver dead-lettered whole, after the sender's cursor had moved past it.
func TestTxnBatchesStayUnderTheLimit(t *testing.T) {
	a := newFuzzPeer(t)
	s := &Service{opts: Options{Org: "a.test", Keys: &Keys{file: a.key}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	create := backfillEvent(t, a, "a.test", "m.room.create", "@alice:a.test", `{"creator":"@alice:a.test"}`)
	for _, fill := range []string{"x", "<"} {
		body := strings.Repeat(fill, content.MaxContentBytes-len(`{"body":"","msgtype":"m.text"}`))
		largest := `{"body":"` + body + `","msgtype":"m.text"}`
		var events []*event.Event
		for range MaxPDUs {
			e := backfillEvent(t, a, "a.test", "m.room.message", "@alice:a.test", largest, create.EventID)
			e.Signatures = nil // as stored: signed on the way out
			events = append(events, e)
		}
		txns := 0
		for rest := events; len(rest) > 0; txns++ {
			raw, _, n, err := s.encodeTxn("b.test", rest)
			if err != nil {
				t.Fatal(err)
			}
			if n < 1 || n > len(rest) {
				t.Fatalf("fill %q: a transaction of %d events out of %d", fill, n, len(rest))
			}
			if len(raw) > MaxMessageBytes {
				t.Fatalf("fill %q: a transaction of %d events is %d bytes, over the receiver's %d", fill, n, len(raw), MaxMessageBytes)
			}
			txn, err := DecodeTransaction(raw)
			if err != nil {
				t.Fatalf("fill %q: the receiver refuses the transaction: %v", fill, err)
			}
			for i, p := range txn.PDUs {
				if p.EventID != rest[i].EventID {
					t.Fatalf("fill %q: event %d of the transaction is %s, want %s", fill, i, p.EventID, rest[i].EventID)
				}
			}
			if len(txn.PDUs) != n {
				t.Fatalf("fill %q: reported %d events, the transaction has %d", fill, n, len(txn.PDUs))
			}
			rest = rest[n:]
		}
		if txns < 2 {
			t.Fatalf("fill %q: %d events of %d bytes went in one transaction", fill, MaxPDUs, len(largest))
		}
	}
}
