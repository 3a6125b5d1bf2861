package federation

import (
	"io"
	"log/slog"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
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
	if err := event.VerifySignature(out, "a.test", a.key.KeyID, a.peer.Public); err != nil {
		t.Fatalf("own event: %v", err)
	}
	if out.StreamPos != 0 || out.Unsigned != nil {
		t.Fatalf("local fields left on the wire: %+v", out)
	}
	if own.Signatures != nil {
		t.Fatal("the stored event was changed")
	}
	again, _ := s.outgoingPDU(own)
	if again.Signatures["a.test"][a.key.KeyID] != out.Signatures["a.test"][a.key.KeyID] {
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
	if err := event.VerifySignature(out, "a.test", a.key.KeyID, a.peer.Public); err != nil {
		t.Fatalf("redacted event: %v", err)
	}
	if err := event.VerifySignature(out.Unsigned.RedactedBecause, "a.test", a.key.KeyID, a.peer.Public); err != nil {
		t.Fatalf("redaction: %v", err)
	}

	// Another org's event keeps exactly its origin's signature.
	foreign := backfillEvent(t, c, "c.test", "m.room.message", "@carol:c.test", msg("hello"))
	out, _ = s.outgoingPDU(foreign)
	if len(out.Signatures) != 1 || out.Signatures["c.test"][c.key.KeyID] != foreign.Signatures["c.test"][c.key.KeyID] {
		t.Fatalf("foreign event signatures changed: %v", out.Signatures)
	}
}
