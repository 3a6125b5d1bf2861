package federation

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// The decoders of wire.go take untrusted bytes straight off the broker. The fuzz targets
// below check that they never panic, that everything they accept satisfies the documented
// bounds, that an accepted message survives a re-encoding, and that the steps the inbox runs
// next on accepted input (signature check, per-event check, content rules) do not panic either.

// fuzzPeer is the key the seeds are signed with.
type fuzzPeer struct {
	key  *SigningKey
	peer PeerKey
}

func newFuzzPeer(tb testing.TB) fuzzPeer {
	tb.Helper()
	k, err := GenerateKey()
	if err != nil {
		tb.Fatal(err)
	}
	return fuzzPeer{key: k, peer: PeerKey{KeyID: k.KeyID, Public: k.Private.Public().(ed25519.PublicKey)}}
}

// signedPDU is a sealed and signed event of origin.
func signedPDU(tb testing.TB, p fuzzPeer, origin, typ string, stateKey *string, content string) *event.Event {
	tb.Helper()
	e := &event.Event{RoomID: "!room:" + origin, Sender: "@alice:" + origin, Origin: origin, OriginTS: 1700000000000,
		Type: typ, StateKey: stateKey, Content: json.RawMessage(content), PrevEvents: []string{"$prev"}, Depth: 3}
	if err := event.Seal(e); err != nil {
		tb.Fatal(err)
	}
	if err := event.Sign(e, origin, signatureKey(p.key.KeyID), p.key.Private); err != nil {
		tb.Fatal(err)
	}
	return e
}

func strp(s string) *string { return &s }

// validTxn is a signed transaction from a.test to b.test carrying messages (one with HTML that
// sanitizing would change), member events (one with a reason) and a redaction with a reason.
func validTxn(tb testing.TB, p fuzzPeer) []byte {
	tb.Helper()
	pdus := []*event.Event{
		signedPDU(tb, p, "a.test", "m.room.message", nil, `{"body":"hi","msgtype":"m.text"}`),
		signedPDU(tb, p, "a.test", "m.room.member", strp("@alice:a.test"), `{"membership":"join"}`),
		signedPDU(tb, p, "a.test", "m.room.message", nil,
			`{"body":"b","format":"org.matrix.custom.html","formatted_body":"<script>x</script><b>b</b>","msgtype":"m.text"}`),
		signedPDU(tb, p, "a.test", "m.room.member", strp("@bob:a.test"), `{"membership":"ban","reason":"spam"}`),
	}
	redaction := &event.Event{RoomID: "!room:a.test", Sender: "@alice:a.test", Origin: "a.test", OriginTS: 1700000000000,
		Type: "m.room.redaction", Redacts: "$target", Content: json.RawMessage(`{"reason":"spam"}`), PrevEvents: []string{"$prev"}, Depth: 3}
	if err := event.Seal(redaction); err != nil {
		tb.Fatal(err)
	}
	if err := event.Sign(redaction, "a.test", signatureKey(p.key.KeyID), p.key.Private); err != nil {
		tb.Fatal(err)
	}
	pdus = append(pdus, redaction)
	raw, err := EncodeSignedTransaction("a.test", "b.test", "txn-1", p.key, pdus)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// mutateJSON decodes raw into a generic object, lets f change it and re-encodes it.
func mutateJSON(tb testing.TB, raw []byte, f func(m map[string]any)) []byte {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		tb.Fatal(err)
	}
	f(m)
	out, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func FuzzDecodeTransaction(f *testing.F) {
	p := newFuzzPeer(f)
	valid := validTxn(f, p)
	f.Add(valid)
	// Hostile variants of the valid transaction.
	for _, mut := range []func(m map[string]any){
		func(m map[string]any) { m["destination"] = "" },
		func(m map[string]any) { delete(m, "origin") },
		func(m map[string]any) { m["origin"] = "evil.test" },
		func(m map[string]any) { m["txn_id"] = strings.Repeat("x", 256) },
		func(m map[string]any) { m["txn_id"] = strings.Repeat("x", 255) },
		func(m map[string]any) { m["type"] = TypeRequest },
		func(m map[string]any) { m["pdus"] = []any{nil} },
		func(m map[string]any) { m["pdus"] = nil },
		func(m map[string]any) { m["pdus"] = make([]any, MaxPDUs+1) },
		func(m map[string]any) { m["edus"] = make([]any, MaxEDUs+1) },
		func(m map[string]any) { m["edus"] = []any{map[string]any{"type": "m.typing", "content": 5}} },
		func(m map[string]any) { m["extra"] = true },
		func(m map[string]any) { m["signatures"] = map[string]any{"a.test": map[string]any{"ed25519:x": "!!"}} },
		func(m map[string]any) { m["signatures"] = map[string]any{"a.test": nil} },
		func(m map[string]any) { m["origin_ts"] = 1.5 },
		func(m map[string]any) { m["pdus"].([]any)[0].(map[string]any)["content"] = map[string]any{"x": 1.5} },
		func(m map[string]any) { m["pdus"].([]any)[0].(map[string]any)["unknown"] = 1 },
		func(m map[string]any) {
			m["pdus"].([]any)[0].(map[string]any)["unsigned"] = map[string]any{"redacted_because": map[string]any{"content": []any{}}}
		},
	} {
		f.Add(mutateJSON(f, valid, mut))
	}
	for _, s := range []string{
		``, `null`, `[]`, `{}`, `"x"`, `{"type":"parley.txn.v1"}`,
		`{"type":"parley.txn.v1","txn_id":"t","origin":"a","destination":"b","pdus":[],"edus":[]} {}`,
		`{"type":"parley.txn.v1","txn_id":"t","origin":"a","destination":"b","pdus":[{}],"edus":[{}]}`,
		`{"type":"parley.txn.v1","txn_id":"t","origin":"a","destination":"b","pdus":[{"content":{"a":1,"a":2}}]}`,
		`{"type":"parley.txn.v1","txn_id":"t","type":"x","origin":"a","destination":"b"}`,
		`{"type":"parley.txn.v1","txn_id":"t","origin":"a","destination":"b","origin_ts":99999999999999999999}`,
		`{"type":"parley.txn.v1","txn_id":"t","origin":"a","destination":"b","pdus":[{"depth":9007199254740993,"content":{}}]}`,
		"{\"type\":\"parley.txn.v1\",\"txn_id\":\"\xff\",\"origin\":\"a\",\"destination\":\"b\"}",
		`{"type":"parley.txn.v1","txn_id":"t","origin":"a","destination":"b","pdus":[` + strings.Repeat(`{"unsigned":{"redacted_because":`, 50) + `{}` + strings.Repeat(`}}`, 50) + `]}`,
		strings.Repeat(`[`, 10000),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		tx, err := DecodeTransaction(body)
		if err != nil {
			if tx != nil {
				t.Fatalf("DecodeTransaction returned both a transaction and %v", err)
			}
			return
		}
		checkTxnBounds(t, body, tx)
		// An accepted transaction re-encodes into one that is accepted again, unchanged.
		again, err := json.Marshal(tx)
		if err != nil {
			t.Fatalf("re-encoding an accepted transaction: %v", err)
		}
		tx2, err := DecodeTransaction(again)
		if err != nil {
			t.Fatalf("re-encoded transaction refused: %v\n%s", err, again)
		}
		again2, _ := json.Marshal(tx2)
		if !bytes.Equal(again, again2) {
			t.Fatalf("re-encoding is not stable:\n%s\n%s", again, again2)
		}
		// What the inbox does next must not panic on anything the decoder let through.
		verr := verifyMessage(tx, tx.Origin, p.peer)
		if verr == nil && tx.Origin != "a.test" {
			t.Fatalf("a transaction claiming origin %q verified with a.test's key", tx.Origin)
		}
		for _, pdu := range tx.PDUs {
			_ = event.Check(pdu)
			_ = verifyEvent(pdu, pdu.Origin, p.peer)
			_ = checkContent(pdu)
			_ = stored(pdu)
			_ = roomOrg(pdu.RoomID) + userOrg(pdu.Sender)
		}
	})
}

func checkTxnBounds(t *testing.T, body []byte, tx *Transaction) {
	t.Helper()
	switch {
	case len(body) > MaxMessageBytes:
		t.Fatalf("accepted a %d-byte transaction", len(body))
	case tx.Type != TypeTxn:
		t.Fatalf("accepted type %q", tx.Type)
	case tx.TxnID == "" || len(tx.TxnID) > 255:
		t.Fatalf("accepted txn_id of %d bytes", len(tx.TxnID))
	case tx.Origin == "" || tx.Destination == "":
		t.Fatalf("accepted origin %q destination %q", tx.Origin, tx.Destination)
	case len(tx.PDUs) > MaxPDUs || len(tx.EDUs) > MaxEDUs:
		t.Fatalf("accepted %d pdus and %d edus", len(tx.PDUs), len(tx.EDUs))
	}
	for i, pdu := range tx.PDUs {
		if pdu == nil {
			t.Fatalf("accepted a null pdu at %d", i)
		}
	}
}

// signedRequest is a valid signed make_join request from a.test to b.test.
func signedRequest(tb testing.TB, p fuzzPeer) []byte {
	tb.Helper()
	r := &Request{Type: TypeRequest, ReqID: "req-1", Origin: "a.test", Destination: "b.test", OriginTS: 1700000000000,
		Op: "make_join", Params: json.RawMessage(`{"room":"#general:b.test","user_id":"@alice:a.test"}`)}
	if err := signMessage(r, "a.test", p.key); err != nil {
		tb.Fatal(err)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

func FuzzDecodeRequest(f *testing.F) {
	p := newFuzzPeer(f)
	valid := signedRequest(f, p)
	f.Add(valid)
	for _, mut := range []func(m map[string]any){
		func(m map[string]any) { m["op"] = "" },
		func(m map[string]any) { m["op"] = "send_join"; m["params"] = map[string]any{"event": nil} },
		func(m map[string]any) {
			m["op"] = "send_join"
			m["params"] = map[string]any{"event": map[string]any{"content": 1}}
		},
		func(m map[string]any) { m["params"] = "not an object" },
		func(m map[string]any) { m["params"] = nil },
		func(m map[string]any) { delete(m, "params") },
		func(m map[string]any) { m["req_id"] = "" },
		func(m map[string]any) { m["req_id"] = strings.Repeat("r", 4096) },
		func(m map[string]any) { m["destination"] = "c.test" },
		func(m map[string]any) { m["type"] = TypeTxn },
		func(m map[string]any) {
			m["signatures"] = map[string]any{"a.test": map[string]any{"ed25519:" + p.key.KeyID: "AAAA"}}
		},
		func(m map[string]any) { m["more"] = []any{} },
	} {
		f.Add(mutateJSON(f, valid, mut))
	}
	for _, s := range []string{``, `null`, `{}`, `{"type":"parley.req.v1"}`, `{"params":` + strings.Repeat(`[`, 5000) + `}`,
		`{"type":"parley.req.v1","req_id":"r","origin":"a","destination":"b","op":"x","params":{}} x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeRequest(body)
		if err != nil {
			if r != nil {
				t.Fatalf("DecodeRequest returned both a request and %v", err)
			}
			return
		}
		switch {
		case len(body) > MaxMessageBytes:
			t.Fatalf("accepted a %d-byte request", len(body))
		case r.Type != TypeRequest || r.ReqID == "" || r.Origin == "" || r.Destination == "" || r.Op == "":
			t.Fatalf("accepted an incomplete request %+v", r)
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("re-encoding an accepted request: %v", err)
		}
		if _, err := DecodeRequest(again); err != nil {
			t.Fatalf("re-encoded request refused: %v\n%s", err, again)
		}
		if verifyMessage(r, r.Origin, p.peer) == nil && r.Origin != "a.test" {
			t.Fatalf("a request claiming origin %q verified with a.test's key", r.Origin)
		}
		// answer's parameter decoding (without a Service: only the strict decode).
		var mj makeJoinParams
		_ = decodeStrict(r.Params, &mj)
		var sj sendJoinParams
		if decodeStrict(r.Params, &sj) == nil && sj.Event != nil {
			_ = event.Check(sj.Event)
			_ = checkContent(sj.Event)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	p := newFuzzPeer(f)
	resp := &Response{Type: TypeResponse, ReqID: "req-1", Origin: "b.test", Destination: "a.test",
		Result: json.RawMessage(`{"event":{"content":{"membership":"join"},"type":"m.room.member"}}`)}
	if err := signMessage(resp, "b.test", p.key); err != nil {
		f.Fatal(err)
	}
	valid, _ := json.Marshal(resp)
	f.Add(valid)
	refusal := &Response{Type: TypeResponse, ReqID: "req-2", Origin: "b.test", Destination: "a.test",
		Code: "M_FORBIDDEN", Message: "no"}
	if err := signMessage(refusal, "b.test", p.key); err != nil {
		f.Fatal(err)
	}
	rv, _ := json.Marshal(refusal)
	f.Add(rv)
	for _, mut := range []func(m map[string]any){
		func(m map[string]any) { m["req_id"] = "" },
		func(m map[string]any) { m["result"] = nil },
		func(m map[string]any) { m["result"] = []any{1, "x", nil} },
		func(m map[string]any) { m["code"] = 5 },
		func(m map[string]any) { m["origin"] = "a.test" },
		func(m map[string]any) {
			m["signatures"] = map[string]any{"b.test": map[string]any{"ed25519:" + p.key.KeyID: "%%%"}}
		},
		func(m map[string]any) { m["x"] = 1 },
	} {
		f.Add(mutateJSON(f, valid, mut))
	}
	for _, s := range []string{``, `null`, `{}`, `{"type":"parley.resp.v1","req_id":"r"}`,
		`{"type":"parley.resp.v1","req_id":"r","result":` + strings.Repeat(`{"a":`, 3000) + `1` + strings.Repeat(`}`, 3000) + `}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeResponse(body)
		if err != nil {
			if r != nil {
				t.Fatalf("DecodeResponse returned both a response and %v", err)
			}
			return
		}
		switch {
		case len(body) > 8*MaxMessageBytes:
			t.Fatalf("accepted a %d-byte response", len(body))
		case r.Type != TypeResponse || r.ReqID == "":
			t.Fatalf("accepted an incomplete response %+v", r)
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("re-encoding an accepted response: %v", err)
		}
		if _, err := DecodeResponse(again); err != nil {
			t.Fatalf("re-encoded response refused: %v\n%s", err, again)
		}
		if verifyMessage(r, r.Origin, p.peer) == nil && r.Origin != "b.test" {
			t.Fatalf("a response claiming origin %q verified with b.test's key", r.Origin)
		}
		// call() unmarshals the result into the op's result type.
		var sj sendJoinResult
		_ = json.Unmarshal(r.Result, &sj)
		_ = (&Error{Code: r.Code, Message: r.Message}).Error()
	})
}

// TestDecodeBounds checks the bounds the fuzz seeds cannot carry cheaply (sizes) and that the
// valid seeds really are accepted and verify, so the fuzz targets start from real messages.
func TestDecodeBounds(t *testing.T) {
	p := newFuzzPeer(t)
	tx, err := DecodeTransaction(validTxn(t, p))
	if err != nil {
		t.Fatalf("valid transaction refused: %v", err)
	}
	if err := verifyMessage(tx, "a.test", p.peer); err != nil {
		t.Fatalf("valid transaction does not verify: %v", err)
	}
	for i, pdu := range tx.PDUs[:2] {
		if err := event.Check(pdu); err != nil {
			t.Fatalf("pdu %d: %v", i, err)
		}
		if err := checkContent(pdu); err != nil {
			t.Fatalf("pdu %d content: %v", i, err)
		}
	}
	if err := checkContent(tx.PDUs[2]); err == nil {
		t.Error("unsanitized formatted_body accepted over federation")
	}
	other := newFuzzPeer(t)
	if err := verifyMessage(tx, "a.test", other.peer); err == nil {
		t.Error("transaction verified with another org's key")
	}
	// A transaction signed, then re-addressed, fails verification.
	readdressed := mutateJSON(t, validTxn(t, p), func(m map[string]any) { m["destination"] = "c.test" })
	tx2, err := DecodeTransaction(readdressed)
	if err != nil {
		t.Fatal(err)
	}
	if verifyMessage(tx2, "a.test", p.peer) == nil {
		t.Error("re-addressed transaction still verifies")
	}
	if _, err := DecodeRequest(signedRequest(t, p)); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}

	pad := func(prefix string, n int) []byte {
		// {"type":..., "txn_id":"xxxx…"} padded to exactly n bytes.
		head := prefix + `"pad":"`
		return []byte(head + strings.Repeat("x", n-len(head)-2) + `"}`)
	}
	big := pad(`{`, MaxMessageBytes+1)
	if _, err := DecodeTransaction(big); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("DecodeTransaction(%d bytes) = %v, want a size refusal", len(big), err)
	}
	if _, err := DecodeRequest(big); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("DecodeRequest(%d bytes) = %v, want a size refusal", len(big), err)
	}
	huge := pad(`{`, 8*MaxMessageBytes+1)
	if _, err := DecodeResponse(huge); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("DecodeResponse(%d bytes) = %v, want a size refusal", len(huge), err)
	}

	for name, tc := range map[string]struct {
		body string
		want string
	}{
		"101 pdus": {fmt.Sprintf(`{"type":%q,"txn_id":"t","origin":"a","destination":"b","pdus":[%s{}]}`, TypeTxn, strings.Repeat(`{},`, MaxPDUs)), "more than"},
		"101 edus": {fmt.Sprintf(`{"type":%q,"txn_id":"t","origin":"a","destination":"b","edus":[%s{}]}`, TypeTxn, strings.Repeat(`{},`, MaxEDUs)), "more than"},
		"null pdu": {fmt.Sprintf(`{"type":%q,"txn_id":"t","origin":"a","destination":"b","pdus":[null]}`, TypeTxn), "null"},
		"long id":  {fmt.Sprintf(`{"type":%q,"txn_id":%q,"origin":"a","destination":"b"}`, TypeTxn, strings.Repeat("t", 256)), "txn_id"},
		"unknown":  {fmt.Sprintf(`{"type":%q,"txn_id":"t","origin":"a","destination":"b","x":1}`, TypeTxn), "unknown field"},
		"trailing": {fmt.Sprintf(`{"type":%q,"txn_id":"t","origin":"a","destination":"b"}{}`, TypeTxn), "trailing"},
	} {
		if _, err := DecodeTransaction([]byte(tc.body)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: DecodeTransaction = %v, want an error with %q", name, err, tc.want)
		}
	}
	longReq := fmt.Sprintf(`{"type":%q,"req_id":%q,"origin":"a","destination":"b","op":"make_join"}`, TypeRequest, strings.Repeat("r", 256))
	if _, err := DecodeRequest([]byte(longReq)); err == nil || !strings.Contains(err.Error(), "req_id") {
		t.Errorf("DecodeRequest with a 256-byte req_id = %v, want a req_id refusal", err)
	}
	longResp := fmt.Sprintf(`{"type":%q,"req_id":%q}`, TypeResponse, strings.Repeat("r", 256))
	if _, err := DecodeResponse([]byte(longResp)); err == nil || !strings.Contains(err.Error(), "req_id") {
		t.Errorf("DecodeResponse with a 256-byte req_id = %v, want a req_id refusal", err)
	}
}
