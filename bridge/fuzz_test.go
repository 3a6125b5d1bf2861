package bridge

import (
	"testing"
)

// FuzzParseCommand: a bridge command from the broker (untrusted) never panics the parser or the
// validator, and what they accept satisfies their documented bounds.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		`{"type":"parley.bridge.v1","bridge":"irc","txn_id":"t1","op":"send","room":"!r:acme.test","sender":"@irc_carol:acme.test","content":{"msgtype":"m.text","body":"hi"}}`,
		`{"type":"parley.bridge.v1","bridge":"irc","txn_id":"t2","op":"join","room":"#general:acme.test","sender":"@irc_carol:acme.test"}`,
		`{"type":"parley.bridge.v1","bridge":"irc","txn_id":"t3","op":"typing","room":"!r:acme.test","sender":"@irc_carol:acme.test","content":{"typing":true}}`,
		`{"type":"parley.bridge.v1","bridge":"irc","txn_id":"t4","op":"send","room":"!r:acme.test","sender":"@irc_carol:acme.test","event_type":"m.reaction","content":{}}`,
		`{"type":"parley.bridge.v1","type":"x"}`,
		`{"type":"parley.bridge.v1","bridge":"irc","txn_id":"t5","op":"leave","room":"!r:acme.test","sender":"@x:acme.test","extra":1}`,
		`[]`, `null`, ``, `{"op":`, "{\"txn_id\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := ParseCommand(body)
		if (c == nil) == (err == nil) {
			t.Fatalf("exactly one of command and error: %v %v", c, err)
		}
		if err != nil {
			switch err.Code {
			case CodeBadJSON, CodeInvalid, CodeTooLarge:
			default:
				t.Fatalf("unexpected code %s", err.Code)
			}
			return
		}
		if len(body) > MaxCommandBytes || c.Type != CommandType || c.Bridge == "" || c.TxnID == "" || len(c.TxnID) > MaxTxnIDBytes {
			t.Fatalf("accepted a command out of bounds: %+v", c)
		}
		_, _ = Validate(c) // must not panic on anything the parser accepts
	})
}
