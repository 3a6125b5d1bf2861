package node

import (
	"bytes"
	"encoding/json"
	"testing"
)

// okFrameByReflection is okFrame as it was before it encoded strings itself: the reference
// its output must match byte for byte.
func okFrameByReflection(id string, result map[string]any) []byte {
	var b bytes.Buffer
	b.WriteString(`{"op":"ok","id":`)
	idJSON, _ := json.Marshal(id)
	b.Write(idJSON)
	for k, v := range result {
		kj, _ := json.Marshal(k)
		vj, err := json.Marshal(v)
		if err != nil {
			continue
		}
		b.WriteByte(',')
		b.Write(kj)
		b.WriteByte(':')
		b.Write(vj)
	}
	b.WriteByte('}')
	return b.Bytes()
}

func TestOKFrameEncodesAsJSONMarshal(t *testing.T) {
	ids := []string{"", "1", "42", `q"uote\back`, "<script>&amp;", "tab\tnew\nline\x01", "bad \xff utf-8", "line\u2028sep\u2029", "ünï"}
	results := []map[string]any{
		nil,
		{"event_id": "$Abc-_09:acme.test"},
		{"event_id": "<&>\"\\\u2028\xfe"},
		{"room_id": "!r:acme.test"},
		{"count": 3},
		{"ok": true},
		{"rooms": []map[string]any{{"room_id": "!a:x", "members": 2}}},
		{"next": nil},
		{"bad": func() {}}, // not encodable: left out, as before
	}
	for _, id := range ids {
		for _, r := range results {
			got, want := okFrame(id, r), okFrameByReflection(id, r)
			if !bytes.Equal(got, want) {
				t.Errorf("okFrame(%q, %v) = %s, want %s", id, r, got, want)
			}
			if !json.Valid(got) {
				t.Errorf("okFrame(%q, %v) = %s: not JSON", id, r, got)
			}
		}
	}
}

// FuzzOKFrame: for any request id and string result (both may come from a client), okFrame
// writes what json.Marshal would.
func FuzzOKFrame(f *testing.F) {
	f.Add("1", "event_id", "$abc:acme.test")
	f.Add(`"<\u2028>"`, "k\x00", "\xff\xfe")
	f.Fuzz(func(t *testing.T, id, key, value string) {
		r := map[string]any{key: value}
		if got, want := okFrame(id, r), okFrameByReflection(id, r); !bytes.Equal(got, want) {
			t.Fatalf("okFrame(%q, %q: %q) = %s, want %s", id, key, value, got, want)
		}
	})
}
