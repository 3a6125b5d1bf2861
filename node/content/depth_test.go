package content

import (
	"encoding/json"
	"strings"
	"testing"
)

// nested is {"msgtype":"m.text","body":"b","x":V} with V levels of arrays: depth levels+1.
func nested(levels int) json.RawMessage {
	return json.RawMessage(`{"msgtype":"m.text","body":"b","x":` + strings.Repeat("[", levels) + strings.Repeat("]", levels) + `}`)
}

// Content as deep as canonical JSON allows (10,000 levels) made every frame carrying the event
// deeper than encoding/json reads, so Go clients could not read the room's pushes, history or
// sync answers any more.
func TestMessageDepthIsBounded(t *testing.T) {
	if _, err := Message("m.room.message", nested(31)); err != nil {
		t.Fatalf("content of depth 32: %v", err)
	}
	for _, c := range []struct {
		name, typ string
		raw       json.RawMessage
	}{
		{"arrays", "m.room.message", nested(32)},
		{"very deep", "m.room.message", nested(9998)},
		{"objects", "m.room.message", json.RawMessage(`{"msgtype":"m.text","body":"b","x":` + strings.Repeat(`{"a":`, 40) + `1` + strings.Repeat("}", 40) + `}`)},
		{"in an edit", "m.room.message", json.RawMessage(`{"msgtype":"m.text","body":"* b","m.relates_to":{"rel_type":"m.replace","event_id":"$e"},` +
			`"m.new_content":{"msgtype":"m.text","body":"b","x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}}`)},
		{"a reaction", "m.reaction", json.RawMessage(`{"m.relates_to":{"rel_type":"m.annotation","event_id":"$e","key":"k"},"x":` +
			strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`)},
	} {
		if _, err := Message(c.typ, c.raw); err == nil || err.Code != "M_INVALID_PARAM" {
			t.Errorf("%s: got %v, want M_INVALID_PARAM", c.name, err)
		}
	}
	// Brackets inside strings do not count.
	text := strings.Repeat("[{", 100) + `\"` + strings.Repeat("]", 50)
	raw, _ := json.Marshal(map[string]any{"msgtype": "m.text", "body": text, "formatted_body": text})
	if _, err := Message("m.room.message", raw); err != nil {
		t.Fatalf("brackets in strings: %v", err)
	}
}
