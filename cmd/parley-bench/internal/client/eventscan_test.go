package client

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

var scanSeeds = []string{
	`{"op":"event","event":{"event_id":"$a","room_id":"!r:x","sender":"@u:x","origin":"x","origin_ts":17,"type":"m.room.message","stream_pos":42,"content":{"msgtype":"m.text","body":"pb1 1 2"},"unsigned":{"txn_id":"t1"},"hashes":{"sha256":"abc"},"signatures":{"x":{"ed25519:k":"s"}},"prev_events":["$p"],"depth":3}}`,
	`{"event":{"type":"m.room.member","content":{"membership":"join"}},"op":"event"}`,
	`{"op":"event","event":null}`,
	`{"op":"event","event":{"content":null,"unsigned":null,"body":"not content"}}`,
	`{"op":"event","event":{"content":{"body":"a\"b\\c\u00e9\n"}}}`,
	`{"op":"event","event":{"content":{"body":"h\u00e9llo ☃"}}}`,
	`{"op":"event","event":{"stream_pos":1.5}}`,
	`{"op":"event","event":{"stream_pos":"1"}}`,
	`{"op":"event","event":{"Stream_Pos":7}}`,
	`{"OP":"event","event":{}}`,
	`{"op":"event","event":{"type":"a"},"event":{"sender":"b"}}`,
	`{"op":"event","event":{"type":"a"},"event":null}`,
	`{"op":"event","event":{}} x`,
	`{"op":"event","event":{"x":[1,2,{"y":[true,false,null,-0.5e3]}]}}`,
	`{"op":"event","event":{"x":[1,]}}`,
	`{"op":"event","event":{"x":01}}`,
	`{"op":"ok","id":"3"}`,
	`{"op":"event","id":5,"event":{}}`,
	`{"op":"event","event":{"body":"\ud83d\ude00"}}`,
	"{\"op\":\"event\",\"event\":{\"type\":\"\xff\"}}",
	`{"op":"event","event":{"type":"a\u0000b"}}`,
	`[1,2]`,
	``,
	// The node's own shape (key order, sizes), which the fast paths are built for.
	realFrame,
	// Escapes: in kept, reused and skipped strings, invalid ones, and one on a word boundary.
	`{"op":"event","event":{"room_id":"!r\u003ax","sender":"@u:\"x","type":"m.room.message\/","content":{"msgtype":"m.te\txt"}}}`,
	`{"op":"event","event":{"event_id":"$0123456789abcd\"ef","hashes":{"sha256":"0123456789abcdef\\"},"prev_events":["\ud800"]}}`,
	`{"op":"event","event":{"type":"\x41"}}`,
	`{"op":"event","event":{"type":"\u12"}}`,
	`{"op":"event","event":{"type":"\u12G4"}}`,
	`{"op":"event","event":{"hashes":{"sha256":"\q"}}}`,
	`{"op":"event","event":{"type":"abc\`,
	`{"\u006fp":"event","event":{}}`,
	`{"op":"\u0065vent","event":{"type":"\u00e9\u2603"}}`,
	// Control characters and invalid UTF-8: kept, skipped, in keys.
	"{\"op\":\"event\",\"event\":{\"sender\":\"a\tb\"}}",
	"{\"op\":\"event\",\"event\":{\"hashes\":{\"sha256\":\"0123456789abcdef\x01\"}}}",
	"{\"op\":\"event\",\"event\":{\"hashes\":{\"sha256\":\"\xff\xfe\"}}}",
	"{\"op\":\"event\",\"event\":{\"room_id\":\"!r:\xc3\xa9\"}}",
	"{\"op\":\"event\",\"event\":{\"room_id\":\"\xed\xa0\x80\"}}",
	"{\"op\":\"event\",\"event\":{\"s\xc3\xa9nder\":\"x\"}}",
	"{\"op\":\"event\",\"event\":{\"x\":{\"\xff\":1,\"a\\u0000\":2}}}",
	// Integers: int64 bounds, -0, leading zeros, fractions, exponents.
	`{"op":"event","event":{"origin_ts":9223372036854775807,"stream_pos":-9223372036854775808}}`,
	`{"op":"event","event":{"origin_ts":9223372036854775808}}`,
	`{"op":"event","event":{"stream_pos":-9223372036854775809}}`,
	`{"op":"event","event":{"stream_pos":18446744073709551616}}`,
	`{"op":"event","event":{"stream_pos":99999999999999999999}}`,
	`{"op":"event","event":{"stream_pos":-0,"origin_ts":0}}`,
	`{"op":"event","event":{"stream_pos":00}}`,
	`{"op":"event","event":{"stream_pos":-01}}`,
	`{"op":"event","event":{"stream_pos":1e3}}`,
	`{"op":"event","event":{"stream_pos":1E+3}}`,
	`{"op":"event","event":{"stream_pos":1.0}}`,
	`{"op":"event","event":{"stream_pos":-}}`,
	`{"op":"event","event":{"stream_pos":null,"origin_ts":-5}}`,
	`{"op":"event","retry_after_ms":12,"event":{"depth":1e400,"x":-0.0e-0}}`,
	// Whitespace between tokens.
	" {\t\"op\" :\n\"event\" ,\r\"event\" : { \"room_id\" : \"!r:x\" , \"content\" : { \"body\" : \"b\" } , \"x\" : [ 1 , { } , [ ] ] } } \n",
	`{"op":"event","event":{"room_id":"!r:x" ,"sender" :"@u:x","type": "t"}}`,
	// Keys next to known ones, keys near the end, folded and duplicated keys.
	`{"op":"event","event":{"room_idx":"a","origin_tsx":1,"typ":"b","content":{"bodyy":"c"}}}`,
	`{"op":"event","event":{"Type":"c"}}`,
	`{"op":"event","event":{"ROOM_ID":"a"}}`,
	"{\"op\":\"event\",\"event\":{\"\xe2\x84\xaaey\":\"a\"}}",
	`{"op":"event","event":{"room_id":"a","room_id":"b","room_id":null,"type":""}}`,
	`{"op":"event","event":{"t":1}}`,
	`{"op":"event","event":{"type":"x"}`,
	`{"op":"event","event":{"content":{"body":"a","body":"b"},"content":{"msgtype":"m"},"content":null}}`,
	// The node's prefix, then something else.
	`{"op":"event","event":{},"op":"ok"}`,
	`{"op":"event","event":{},"op":null}`,
	`{"op":"event","event":5}`,
	`{"op":"event","event":"x"}`,
	`{"op":"event","event":{"content":[],"unsigned":{"txn_id":1}}}`,
	`{"op":"event","event":{"unsigned":{"txn_id":"t","TXN_ID":"u"}}}`,
	// Deep nesting.
	`{"op":"event","event":{"x":` + strings.Repeat("[", 62) + strings.Repeat("]", 62) + `}}`,
	`{"op":"event","event":{"x":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + `}}`,
	`{"op":"event","event":{"x":` + strings.Repeat(`{"a":`, 70) + "1" + strings.Repeat("}", 70) + `}}`,
}

// FuzzScanEventFrame: whenever the fast scanner accepts a frame, encoding/json must accept it
// too and decode the very same event (differential test). Reusing a previous event's
// strings, as the read loop does, must change nothing.
func FuzzScanEventFrame(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	prevFrame := []byte(`{"op":"event","event":{"room_id":"!r:x","sender":"@u:x","origin":"x","type":"m.room.message","content":{"msgtype":"m.text","membership":"join"}}}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast Event
		ok := scanEventFrame(data, &fast)
		// The read loop's reader, after an event whose strings the frame may repeat, then
		// after the frame itself (or what a refused scan left of it).
		var r eventReader
		if !r.scan(prevFrame) {
			t.Fatal("the reader refused an ordinary event push")
		}
		for n := range 2 {
			if got := r.scan(data); got != ok || ok && !reflect.DeepEqual(r.ev, fast) {
				t.Fatalf("reader scan %d differs on %q:\nreader %v %+v\nscan   %v %+v", n+1, data, got, r.ev, ok, fast)
			}
		}
		// The same with views of the frame (EventViews): the same values.
		rv := eventReader{views: true}
		if got := rv.scan(data); got != ok || ok && !reflect.DeepEqual(rv.ev, fast) {
			t.Fatalf("reader with views differs on %q:\nreader %v %+v\nscan   %v %+v", data, got, rv.ev, ok, fast)
		}
		if !ok {
			return
		}
		var slow frameIn
		if err := json.Unmarshal(data, &slow); err != nil {
			t.Fatalf("scanner accepted what encoding/json refuses (%v): %q", err, data)
		}
		if slow.Op != "event" || slow.Event == nil {
			t.Fatalf("scanner accepted a non-event frame: %q", data)
		}
		if !reflect.DeepEqual(fast, *slow.Event) {
			t.Fatalf("scanner and encoding/json disagree on %q:\nfast %+v\njson %+v", data, fast, *slow.Event)
		}
		prev := Event{RoomID: "!r:x", Sender: "@u:x", Origin: "x", Type: "m.room.message", Content: Content{MsgType: "m.text", Membership: "join"}}
		var again Event
		if !scanEventFrameAfter(data, &again, &prev) || !reflect.DeepEqual(again, fast) {
			t.Fatalf("scan after a previous event differs on %q:\n%+v\n%+v", data, again, fast)
		}
	})
}

func TestScanEventFrameDecodesPushes(t *testing.T) {
	var ev Event
	if !scanEventFrame([]byte(scanSeeds[0]), &ev) {
		t.Fatal("the fast path refused an ordinary event push")
	}
	want := Event{EventID: "$a", RoomID: "!r:x", Sender: "@u:x", Origin: "x", OriginTS: 17, Type: "m.room.message",
		StreamPos: 42, Content: Content{MsgType: "m.text", Body: "pb1 1 2"}}
	want.Unsigned.TxnID = "t1"
	if !reflect.DeepEqual(ev, want) {
		t.Fatalf("got %+v, want %+v", ev, want)
	}
	for _, bad := range []string{`{"op":"event","event":{"stream_pos":1.5}}`, `{"OP":"event","event":{}}`, `{"op":"ok","id":"3"}`, `{"op":"event","event":{}} x`} {
		if scanEventFrame([]byte(bad), &ev) {
			t.Errorf("fast path accepted %s", bad)
		}
	}
}

// realFrame is shaped like what a node pushes in the fanout scenario (same keys, order and
// value sizes), so the benchmark weighs the parts the way a profile of the tool does.
const realFrame = `{"op":"event","event":{"event_id":"$Q1m3y0M2yZkKQ8u3Wb3x8hJ2kL0pN4rT6vX8zA1cE3g","room_id":"!abcdEFGHijklMNOP:localhost","sender":"@bench123-p12:localhost","origin":"localhost","origin_ts":1764700000000,"type":"m.room.message","content":{"body":"pb1 123456 1764700000000000000","msgtype":"m.text"},"prev_events":["$Z9y8x7W6v5U4t3S2r1Q0p9O8n7M6l5K4j3I2h1G0f9E"],"depth":812,"hashes":{"sha256":"q0c6bA3mK9vW2xZ5nL8pR1tY4uE7iO0aS3dF6gH9jK2"},"signatures":{"localhost":{"ed25519:a1b2c3":"Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4"}},"stream_pos":812}}`

func TestScanEventFrameRealFrame(t *testing.T) {
	var slow frameIn
	if err := json.Unmarshal([]byte(realFrame), &slow); err != nil {
		t.Fatal(err)
	}
	var ev Event
	if !scanEventFrame([]byte(realFrame), &ev) || !reflect.DeepEqual(ev, *slow.Event) {
		t.Fatalf("got %+v, want %+v", ev, *slow.Event)
	}
	// The read loop's case: only the event ID and the body are new strings.
	var r eventReader
	data := []byte(realFrame)
	if allocs := testing.AllocsPerRun(100, func() { r.scan(data) }); allocs > 2 {
		t.Errorf("%v allocations per event, want 2", allocs)
	}
	if !reflect.DeepEqual(r.ev, ev) {
		t.Fatalf("reader got %+v, want %+v", r.ev, ev)
	}
}

// With views, the fields that differ in every event are the frame's own bytes: the read
// loop's case allocates nothing, decodes what a copying scan does, and an escaped value
// still gets a string of its own.
func TestEventReaderViews(t *testing.T) {
	data := []byte(realFrame)
	var want eventReader
	if !want.scan(data) {
		t.Fatal("the fast path refused the real frame")
	}
	r := eventReader{views: true}
	if !r.scan(data) || !reflect.DeepEqual(r.ev, want.ev) {
		t.Fatalf("views got %+v, want %+v", r.ev, want.ev)
	}
	if allocs := testing.AllocsPerRun(100, func() { r.scan(data) }); allocs != 0 {
		t.Errorf("%v allocations per event with views, want 0", allocs)
	}
	if unsafe.StringData(r.ev.EventID) != &data[bytes.Index(data, []byte(want.ev.EventID))] {
		t.Error("the event id is not a view of the frame")
	}
	if r.ev.RoomID != want.ev.RoomID || unsafe.StringData(r.ev.RoomID) == &data[bytes.Index(data, []byte(want.ev.RoomID))] {
		t.Error("the room id, which the next scan compares against, is a view")
	}

	escaped := []byte(`{"op":"event","event":{"event_id":"$e","room_id":"!r:x","type":"m.room.message","content":{"body":"a\"b"},"unsigned":{"txn_id":"t\u00e9"}}}`)
	if !r.scan(escaped) || r.ev.Content.Body != `a"b` || r.ev.Unsigned.TxnID != "té" {
		t.Fatalf("escaped values: %+v", r.ev)
	}
	for i := range escaped {
		escaped[i] = 'x' // the frame's buffer reused
	}
	if r.ev.Content.Body != `a"b` || r.ev.Unsigned.TxnID != "té" {
		t.Fatalf("an unescaped value shared the frame: %+v", r.ev)
	}
}

// firstSpecial must find the first byte that is < 0x20, '"', '\\' or >= 0x80 wherever it
// is in the word loop (borrows across bytes are what could go wrong).
func TestFirstSpecial(t *testing.T) {
	want := func(b []byte, j int) int {
		for ; j < len(b); j++ {
			if c := b[j]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
				break
			}
		}
		return j
	}
	check := func(b []byte, j int) {
		t.Helper()
		if got, w := firstSpecial(b, j), want(b, j); got != w {
			t.Fatalf("firstSpecial(%q, %d) = %d, want %d", b, j, got, w)
		}
	}
	plain := []byte(strings.Repeat("az09!#[]}~ +/_-=", 3))
	for n := 0; n <= 40; n++ {
		for pos := 0; pos < n; pos++ {
			for c := 0; c < 256; c++ {
				b := append([]byte(nil), plain[:n]...)
				b[pos] = byte(c)
				check(b, 0)
				if pos > 0 {
					check(b, 1)
				}
			}
		}
		check(plain[:n], 0)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		b := make([]byte, rng.IntN(40))
		for k := range b {
			b[k] = "\x00\x1f \x21\"#[\\]\x7f\x80\xffab"[rng.IntN(14)]
		}
		check(b, rng.IntN(len(b)+1))
	}
	check(nil, 0)
}

// intInto must accept exactly the JSON integers that strconv.ParseInt(…, 10, 64) accepts,
// which is what encoding/json uses for an int64 field, and refuse floats.
func TestIntInto(t *testing.T) {
	cases := []string{"0", "-0", "7", "-7", "812", "1764700000000", "9223372036854775807", "-9223372036854775808",
		"9223372036854775808", "-9223372036854775809", "18446744073709551615", "18446744073709551616",
		"99999999999999999999", "123456789012345678901234567890", "00", "01", "-01", "1.5", "1e3", "1E3",
		"-", "", "+1", "1.0", "0.0", "-0e0", "null", "nul", "true", " 5", "\t-5"}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		n := rng.Int64() >> rng.IntN(64)
		if rng.IntN(2) == 0 {
			n = -n
		}
		cases = append(cases, strconv.FormatInt(n, 10))
		u := strconv.FormatUint(rng.Uint64(), 10)
		cases = append(cases, u, "-"+u)
	}
	for _, c := range cases {
		for _, after := range []string{"", ",", "}", "x"} {
			b := []byte(c + after)
			var got int64
			end := intInto(b, 0, &got)
			lit := strings.TrimLeft(c, " \t")
			var want int64
			var err error
			switch {
			case lit == "null":
				want = 0
			case len(lit) > 1 && lit[0] == '0' && lit[1] >= '0' && lit[1] <= '9',
				len(lit) > 2 && lit[:2] == "-0" && lit[2] >= '0' && lit[2] <= '9':
				// A leading zero ends the number: what follows is left for the caller.
				want, lit = 0, lit[:strings.IndexByte(lit, '0')+1]
			case strings.HasPrefix(lit, "+"):
				err = strconv.ErrSyntax // not JSON
			default:
				want, err = strconv.ParseInt(lit, 10, 64)
			}
			if ok := end >= 0; ok != (err == nil) || ok && (got != want || end != len(c)-len(strings.TrimLeft(c, " \t"))+len(lit)) {
				t.Errorf("intInto(%q) = %d, end %d; want %d, err %v", b, got, end, want, err)
			}
		}
	}
}

func BenchmarkScanEventFrame(b *testing.B) {
	data := []byte(scanSeeds[0])
	b.Run("scan", func(b *testing.B) {
		for b.Loop() {
			var ev Event
			scanEventFrame(data, &ev)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			var f frameIn
			_ = json.Unmarshal(data, &f)
		}
	})
	real := []byte(realFrame)
	b.Run("real", func(b *testing.B) {
		for b.Loop() {
			var ev Event
			scanEventFrame(real, &ev)
		}
	})
	// real-after is the read loop's case: the previous event's room, sender, origin and
	// type are reused.
	b.Run("real-after", func(b *testing.B) {
		var prev Event
		if !scanEventFrame(real, &prev) {
			b.Fatal("the fast path refused the real frame")
		}
		for b.Loop() {
			var ev Event
			scanEventFrameAfter(real, &ev, &prev)
		}
	})
	// reader is what the read loop does: an eventReader, which also knows which of the
	// previous event's strings are plain.
	b.Run("reader", func(b *testing.B) {
		var r eventReader
		for b.Loop() {
			r.scan(real)
		}
	})
	b.Run("real-encoding-json", func(b *testing.B) {
		for b.Loop() {
			var f frameIn
			_ = json.Unmarshal(real, &f)
		}
	})
}
