package client

import (
	"encoding/json"
	"reflect"
	"testing"
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
}

// FuzzScanEventFrame: whenever the fast scanner accepts a frame, encoding/json must accept it
// too and decode the very same event (differential test).
func FuzzScanEventFrame(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast Event
		if !scanEventFrame(data, &fast) {
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
		// Reusing a previous event's strings must not change the result.
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
}
