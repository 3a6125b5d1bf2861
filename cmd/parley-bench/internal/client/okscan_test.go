package client

import (
	"encoding/json"
	"testing"
)

var okSeeds = []string{
	`{"op":"ok","id":"17","event_id":"$AbC-_09xyz"}`,
	`{"op":"ok","id":"","event_id":""}`,
	`{"op":"ok","id":"17","event_id":"$a\u00e9"}`, // an escape: left to encoding/json
	`{"op":"ok","id":"17","event_id":"$aé"}`,      // non-ASCII: likewise
	`{"op":"ok","id":"17","event_id":"$a"} `,
	`{"op":"ok","id":"17","event_id":"$a","x":1}`,
	`{"op":"ok","id":"17"}`,
	`{"op":"ok","id":17,"event_id":"$a"}`,
	`{"op":"ok","id":"17","event_id":null}`,
	`{"op":"ok","id":"17","event_id":"$a"`,
	`{"op":"ok","id":"17","event_id":"$a}`,
	`{"op":"ok","id":"1"7","event_id":"$a"}`,
	`{"op":"error","id":"17","code":"M_FORBIDDEN"}`,
	`{"op":"ok", "id":"17","event_id":"$a"}`,
}

func TestScanOKFrame(t *testing.T) {
	var f frameIn
	if !scanOKFrame([]byte(okSeeds[0]), &f) || f.Op != "ok" || f.ID != "17" || f.EventID != "$AbC-_09xyz" {
		t.Fatalf("the node's own ok: %v %+v", scanOKFrame([]byte(okSeeds[0]), &f), f)
	}
	for _, s := range okSeeds[2:] {
		if scanOKFrame([]byte(s), &f) {
			t.Errorf("accepted %s", s)
		}
	}
}

// FuzzScanOKFrame: whatever the fast path accepts, encoding/json decodes to the same frame.
func FuzzScanOKFrame(f *testing.F) {
	for _, s := range okSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast frameIn
		if !scanOKFrame(data, &fast) {
			return
		}
		var slow frameIn
		if err := json.Unmarshal(data, &slow); err != nil {
			t.Fatalf("accepted what encoding/json refuses (%v): %q", err, data)
		}
		if fast.Op != slow.Op || fast.ID != slow.ID || fast.EventID != slow.EventID || slow.Event != nil ||
			slow.Code != "" || slow.Message != "" || slow.RetryAfterMS != 0 || slow.UserID != "" || slow.RoomID != "" {
			t.Fatalf("disagree on %q:\nfast %+v\njson %+v", data, fast, slow)
		}
	})
}
