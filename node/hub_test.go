package node

import (
	"encoding/json"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// Receivers other than the sender get the stored JSON without unsigned.txn_id; cutting it off
// the end must give exactly what encoding the event without it gives, whatever the txn_id holds.
func TestPublicJSONIsTheEventWithoutTxnID(t *testing.T) {
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
