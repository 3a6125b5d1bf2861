package bridge

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/config"
	"github.com/parley-chat/parley/consensus/event"
)

func TestParseCommand(t *testing.T) {
	good := `{"type":"parley.bridge.v1","bridge":"irc","txn_id":"t1","op":"send","room":"#lobby:acme.test",` +
		`"sender":"@irc_bob:acme.test","content":{"msgtype":"m.text","body":"hi"}}`
	c, err := ParseCommand([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != "irc" || c.TxnID != "t1" || c.Op != OpSend || c.Room != "#lobby:acme.test" || c.Sender != "@irc_bob:acme.test" ||
		c.EventType != "" || string(c.Content) != `{"msgtype":"m.text","body":"hi"}` {
		t.Fatalf("parsed %+v", c)
	}
	for _, op := range []string{`"op":"join"`, `"op":"leave"`, `"op":"typing"`} {
		body := strings.Replace(strings.Replace(good, `"op":"send"`, op, 1), `,"content":{"msgtype":"m.text","body":"hi"}`, "", 1)
		if _, err := ParseCommand([]byte(body)); err != nil {
			t.Errorf("%s: %v", op, err)
		}
	}
	if c, err := ParseCommand([]byte(strings.Replace(good, `"content":{"msgtype":"m.text","body":"hi"}`, `"content":null`, 1))); err != nil || c.Content != nil {
		t.Errorf("null content: %v %+v", err, c)
	}

	for _, tc := range []struct {
		name, body, code, reason string
	}{
		{"not json", `{not json`, CodeBadJSON, "invalid JSON"},
		{"empty", ``, CodeBadJSON, "a command is a JSON object"},
		{"array", `[1]`, CodeBadJSON, "a command is a JSON object"},
		{"truncated", good[:len(good)-1], CodeBadJSON, "invalid JSON"},
		{"trailing", good + `{}`, CodeBadJSON, "data after the command object"},
		{"unknown field", strings.Replace(good, `"op"`, `"extra":1,"op"`, 1), CodeBadJSON, `unknown field "extra"`},
		{"duplicate field", strings.Replace(good, `"op":"send"`, `"op":"send","op":"join"`, 1), CodeBadJSON, `duplicate field "op"`},
		{"wrong type", strings.Replace(good, `"txn_id":"t1"`, `"txn_id":7`, 1), CodeBadJSON, "txn_id must be a string"},
		{"null field", strings.Replace(good, `"txn_id":"t1"`, `"txn_id":null`, 1), CodeBadJSON, "missing txn_id"},
		{"missing sender", strings.Replace(good, `"sender":"@irc_bob:acme.test",`, ``, 1), CodeBadJSON, "missing sender"},
		{"wrong type tag", strings.Replace(good, `parley.bridge.v1`, `parley.bridge.v2`, 1), CodeBadJSON, "type must be parley.bridge.v1"},
		{"unknown op", strings.Replace(good, `"op":"send"`, `"op":"dance"`, 1), CodeBadJSON, `unknown op "dance"`},
		{"content not object", strings.Replace(good, `{"msgtype":"m.text","body":"hi"}`, `"hi"`, 1), CodeBadJSON, "content must be an object"},
		{"not utf-8", strings.Replace(good, "hi", "h\xffi", 1), CodeBadJSON, "not valid UTF-8"},
		{"lone surrogate", strings.Replace(good, `"txn_id":"t1"`, `"txn_id":"t\ud800"`, 1), CodeBadJSON, "lone surrogate"},
		{"long txn_id", strings.Replace(good, `"t1"`, `"`+strings.Repeat("x", 256)+`"`, 1), CodeInvalid, "txn_id"},
		{"nul txn_id", strings.Replace(good, `"t1"`, `"a\u0000b"`, 1), CodeInvalid, "txn_id"},
		{"event_type on join", strings.Replace(strings.Replace(good, `"op":"send"`, `"op":"join","event_type":"m.room.message"`, 1), `,"content":{"msgtype":"m.text","body":"hi"}`, "", 1), CodeInvalid, "event_type is only for send"},
		{"content on leave", strings.Replace(good, `"op":"send"`, `"op":"leave"`, 1), CodeInvalid, "leave takes no content"},
		{"too large", `{"type":"` + strings.Repeat("x", MaxCommandBytes) + `"}`, CodeTooLarge, "command of"},
	} {
		_, err := ParseCommand([]byte(tc.body))
		if err == nil || err.Code != tc.code || !strings.Contains(err.Reason, tc.reason) {
			t.Errorf("%s: got %v, want %s containing %q", tc.name, err, tc.code, tc.reason)
		}
	}
}

func TestValidate(t *testing.T) {
	send := func(typ, content string) (*Validated, *Error) {
		return Validate(&Command{Op: OpSend, EventType: typ, Content: json.RawMessage(content)})
	}
	v, err := send("", `{"msgtype":"m.text","body":"hi","format":"org.matrix.custom.html",`+
		`"formatted_body":"<b>hi</b><script>alert(1)</script><a href=\"javascript:alert(2)\" onclick=\"x()\">l</a>"}`)
	if err != nil {
		t.Fatal(err)
	}
	if v.EventType != "m.room.message" {
		t.Errorf("event type %q", v.EventType)
	}
	var c map[string]string
	if err := json.Unmarshal(v.Content, &c); err != nil {
		t.Fatal(err)
	}
	if fb := c["formatted_body"]; !strings.Contains(fb, "<b>hi</b>") || strings.Contains(fb, "script") ||
		strings.Contains(fb, "javascript") || strings.Contains(fb, "onclick") {
		t.Errorf("formatted_body not sanitized: %q", fb)
	}
	for _, tc := range []struct {
		name, typ, content, code string
	}{
		{"unknown msgtype", "", `{"msgtype":"m.bogus","body":"x"}`, CodeInvalid},
		{"no body", "", `{"msgtype":"m.text"}`, CodeInvalid},
		{"no content", "", ``, CodeInvalid},
		{"state type", "m.room.name", `{"name":"x"}`, CodeInvalid},
		{"member type", "m.room.member", `{"membership":"join"}`, CodeInvalid},
		{"float", "", `{"msgtype":"m.text","body":"x","n":1.5}`, CodeInvalid},
		{"long body", "", `{"msgtype":"m.text","body":"` + strings.Repeat("x", 33<<10) + `"}`, CodeTooLarge},
		{"large content", "", `{"msgtype":"m.text","body":"x","pad":"` + strings.Repeat("x", 49<<10) + `"}`, CodeTooLarge},
	} {
		if _, err := send(tc.typ, tc.content); err == nil || err.Code != tc.code {
			t.Errorf("%s: got %v, want %s", tc.name, err, tc.code)
		}
	}
	if v, err := send("m.reaction", `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$x","key":"👍"}}`); err != nil || v.EventType != "m.reaction" {
		t.Errorf("reaction: %v", err)
	}

	typing := func(content string) (*Validated, *Error) {
		c := &Command{Op: OpTyping}
		if content != "" {
			c.Content = json.RawMessage(content)
		}
		return Validate(c)
	}
	if v, err := typing(""); err != nil || v.Typing != (Typing{Typing: true, Timeout: 30 * time.Second}) {
		t.Errorf("default typing: %+v %v", v, err)
	}
	if v, err := typing(`{"typing":false,"timeout_ms":5000}`); err != nil || v.Typing != (Typing{Typing: false, Timeout: 5 * time.Second}) {
		t.Errorf("typing: %+v %v", v, err)
	}
	// Over the client's cap of 120 s it is capped, as a client's is.
	if v, err := typing(`{"typing":true,"timeout_ms":300000}`); err != nil || v.Typing != (Typing{Typing: true, Timeout: 120 * time.Second}) {
		t.Fatalf("typing over the cap: %+v %v", v, err)
	}
	for _, bad := range []string{`{"typing":"yes"}`, `{"timeout_ms":0}`, `{"timeout_ms":-5}`, `{"timeout_ms":1.5}`, `{"other":1}`} {
		if _, err := typing(bad); err == nil || err.Code != CodeInvalid {
			t.Errorf("typing %s: %v", bad, err)
		}
	}
}

func TestRoutingKey(t *testing.T) {
	if got := RoutingKey("!x7Kq:acme.test", "m.room.message"); got != "!x7Kq:acme_test.m_room_message" {
		t.Fatalf("RoutingKey = %q", got)
	}
	if got := EventsExchange("acme.test") + " " + CommandQueue("acme.test") + " " + DeadLetterExchange("acme.test") + " " +
		DeadLetterQueue("acme.test"); got != "parley.acme.test.events parley.acme.test.bridge.in parley.acme.test.bridge.dlx parley.acme.test.bridge.dlq" {
		t.Fatalf("names: %s", got)
	}
}

func TestWireEventStripsTxnID(t *testing.T) {
	e := &event.Event{EventID: "$a", RoomID: "!r:acme.test", Sender: "@u:acme.test", Type: "m.room.message",
		Content: json.RawMessage(`{"body":"x","msgtype":"m.text"}`), PrevEvents: []string{}, StreamPos: 7,
		Unsigned: &event.Unsigned{TxnID: "secret"}}
	b, err := WireEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "secret") || strings.Contains(string(b), "unsigned") || !strings.Contains(string(b), `"stream_pos":7`) {
		t.Fatalf("wire event %s", b)
	}
	if e.Unsigned == nil || e.Unsigned.TxnID != "secret" {
		t.Fatal("WireEvent changed the stored event")
	}
	because := &event.Event{EventID: "$b"}
	e.Unsigned = &event.Unsigned{TxnID: "secret", RedactedBecause: because}
	b, _ = WireEvent(e)
	if strings.Contains(string(b), "secret") || !strings.Contains(string(b), `"redacted_because"`) {
		t.Fatalf("wire event %s", b)
	}
}

func TestCompile(t *testing.T) {
	if _, err := compile(nil); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]config.BridgeConfig{
		{{ID: "a", AMQPUser: "u", Namespace: "("}},
		{{ID: "a", AMQPUser: "u", Namespace: "x"}, {ID: "a", AMQPUser: "v", Namespace: "y"}},
		{{ID: "", AMQPUser: "u", Namespace: "x"}},
		{{ID: "a", AMQPUser: "", Namespace: "x"}},
	} {
		if _, err := compile(bad); err == nil {
			t.Errorf("compile %+v: no error", bad)
		}
	}
	bs, err := compile([]config.BridgeConfig{{ID: "irc", AMQPUser: "u", Namespace: "irc_.*|x"}})
	if err != nil {
		t.Fatal(err)
	}
	// Anchored around the whole expression: the alternation does not escape the anchors.
	for local, want := range map[string]bool{"irc_bob": true, "x": true, "xirc_bob": false, "irc_bob_x": true, "xx": false, "bob": false} {
		if got := bs["irc"].ns.MatchString(local); got != want {
			t.Errorf("namespace match %q = %v, want %v", local, got, want)
		}
	}
}
