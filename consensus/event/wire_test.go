package event

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// wireEvent builds an event whose every field comes from the fuzzer, with the optional parts
// switched by flags, so nil and empty variants are both reached.
func wireEvent(s1, s2 string, content []byte, n int64, flags uint8) *Event {
	e := &Event{EventID: s1, RoomID: s2, Sender: s1 + s2, Origin: s2, OriginTS: n, Type: s1,
		Content: content, PrevEvents: []string{s1, s2}, Depth: -n, Hashes: Hashes{SHA256: s2}}
	if flags&1 != 0 {
		e.StateKey = &s2
	}
	if flags&2 != 0 {
		e.Redacts = s1
	}
	if flags&4 != 0 {
		e.PrevEvents = nil
	} else if flags&8 != 0 {
		e.PrevEvents = []string{}
	}
	if flags&16 != 0 {
		e.Signatures = map[string]map[string]string{s2: {s1: s2, "ed25519:k": s1}, "b": nil}
	} else if flags&32 != 0 {
		e.Signatures = map[string]map[string]string{}
	}
	if flags&64 != 0 {
		e.StreamPos = n
	}
	if flags&128 != 0 {
		inner := &Event{EventID: s2, Content: json.RawMessage(`{"a":1}`)}
		e.Unsigned = &Unsigned{TxnID: s1, RedactedBecause: inner}
		if s1 == "" {
			e.Unsigned.RedactedBecause = nil
		}
	}
	return e
}

func FuzzAppendJSONMatchesMarshal(f *testing.F) {
	f.Add("$ev", "!room:acme.test", []byte(`{"msgtype":"m.text","body":"hi"}`), int64(1700000000000), uint8(0))
	f.Add("a<b>&c", "\u2028\u2029", []byte(` { "b" : "<x>&\u2028" , "a" : [ 1 , 2 ] } `), int64(-5), uint8(255))
	f.Add("\xff\xfe bad", "ctl\x01\x1f\b\f\n\r\t\"\\", []byte(`"s\"<"`), int64(0), uint8(1|4|16|64))
	f.Add("", "", []byte(nil), int64(1<<62), uint8(2|8|32|128))
	f.Add("x", "y", []byte{}, int64(3), uint8(0))
	f.Add("x", "y", []byte(`{"a":`), int64(3), uint8(0))
	f.Add("x", "y", []byte("\"\xe2\x80\xa8\xe2\x80\xa9\\u2028\""), int64(3), uint8(0))
	f.Add("x", "y", []byte("[\"\xff\"]"), int64(3), uint8(0))
	f.Fuzz(func(t *testing.T, s1, s2 string, content []byte, n int64, flags uint8) {
		e := wireEvent(s1, s2, content, n, flags)
		want, wantErr := json.Marshal(e)
		got, gotErr := e.AppendJSON(nil)
		if (wantErr != nil) != (gotErr != nil) {
			t.Fatalf("errors differ: json.Marshal %v, AppendJSON %v", wantErr, gotErr)
		}
		if wantErr == nil && !bytes.Equal(got, want) {
			t.Fatalf("encodings differ:\nmarshal %s\nappend  %s", want, got)
		}
	})
}

// FuzzIsMarshaled: IsMarshaled (the Raft log decoder's check of content and appendRawMessage's
// fast path) accepts exactly what json.Valid accepts and json.Marshal would leave as it is.
func FuzzIsMarshaled(f *testing.F) {
	for _, s := range []string{
		`{"body":"hello","msgtype":"m.text"}`, `{"a":[1,-0,1.5e-3,2E+5,true,false,null,{}],"b":{"c":[]}}`,
		`"\u00e9\/\"\\\b\f\n\r\t"`, `"\u12g4"`, `"\x"`, "\"\x01\"", `"<"`, `"\u003c&"`, "\"\u2028\"",
		"\"\xe2\x80\xa8\"", "\"\xe2\x80\xa9\"", "\"\xe2\x80\xaa\"", "\"\xff\xfe\"", `"`, `"\`, `"\u12"`,
		`01`, `1.`, `1e`, `1e+`, `-`, `.5`, `+1`, `-a`, `1.5.2`, `{"a":1,}`, `[1,]`, `{,}`, `{"a"}`, `{"a":}`,
		`{1:2}`, `[1 2]`, `[1,2] `, ` 1`, `truex`, `nul`, `tru`, `{"a":1}x`, `[`, `]`, `{"a":1`, "",
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		strings.Repeat(`{"a":`, 10000) + "0" + strings.Repeat("}", 10000),
		strings.Repeat(`{"a":`, 10001) + "0" + strings.Repeat("}", 10001),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		canon, err := marshalRawMessage(nil, b)
		want := err == nil && bytes.Equal(canon, b)
		if got := IsMarshaled(b); got != want {
			t.Fatalf("%q: IsMarshaled %v, json.Valid and marshalRawMessage say %v (%v)", b, got, want, err)
		}
		// The fast path gives what the slow one does, or its error (nil content is null).
		if got, gerr := appendRawMessage(nil, b); b != nil && ((gerr == nil) != (err == nil) || !bytes.Equal(got, canon)) {
			t.Fatalf("%q: appendRawMessage %q, %v; marshalRawMessage %q, %v", b, got, gerr, canon, err)
		}
	})
}

func TestAppendJSONNil(t *testing.T) {
	var e *Event
	got, err := e.AppendJSON([]byte("x"))
	if err != nil || string(got) != "xnull" {
		t.Fatalf("nil event: %q, %v", got, err)
	}
}

func BenchmarkEventEncode(b *testing.B) {
	e := &Event{EventID: "$5bJ0p1fY0cR2m8nH3kQ7xW9zT4vL6sA1dG8eF2hJ0kM", RoomID: "!abcdefghijklmnop:acme.test",
		Sender: "@alice:acme.test", Origin: "acme.test", OriginTS: 1700000000000, Type: "m.room.message",
		Content:    json.RawMessage(`{"body":"hello world, this is a typical chat message","msgtype":"m.text"}`),
		PrevEvents: []string{"$4aI9o0eX9bQ1l7mG2jP6wV8yS3uK5rZ0cF7dE1gI9jL"}, Depth: 812,
		Hashes:     Hashes{SHA256: "q0c6bA3mK9vW2xZ5nL8pR1tY4uE7iO0aS3dF6gH9jK2"},
		Signatures: map[string]map[string]string{"acme.test": {"ed25519:a1": "sig"}}, StreamPos: 812,
		Unsigned: &Unsigned{TxnID: "t1"}}
	b.Run("AppendJSON", func(b *testing.B) {
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			buf, _ = e.AppendJSON(buf[:0])
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		for b.Loop() {
			_, _ = json.Marshal(e)
		}
	})
}
