package federation

import (
	"strings"
	"testing"
	"time"
)

func TestDecodeTyping(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		ok            bool
	}{
		{"typing", `{"room_id":"!r:b.test","user_id":"@bob:a.test","typing":true,"timeout_ms":30000}`, true},
		{"stopped, no timeout", `{"room_id":"!r:b.test","user_id":"@bob:a.test","typing":false}`, true},
		{"user of another org", `{"room_id":"!r:b.test","user_id":"@bob:b.test","typing":true}`, false},
		{"origin as a suffix", `{"room_id":"!r:b.test","user_id":"@bob:ba.test","typing":true}`, false},
		{"no sigil", `{"room_id":"!r:b.test","user_id":"bob:a.test","typing":true}`, false},
		{"not a room id", `{"room_id":"#r:b.test","user_id":"@bob:a.test","typing":true}`, false},
		{"room without org", `{"room_id":"!r","user_id":"@bob:a.test","typing":true}`, false},
		{"long room id", `{"room_id":"!` + strings.Repeat("r", 300) + `:b.test","user_id":"@bob:a.test","typing":true}`, false},
		{"unknown field", `{"room_id":"!r:b.test","user_id":"@bob:a.test","typing":true,"x":1}`, false},
		{"typing not a bool", `{"room_id":"!r:b.test","user_id":"@bob:a.test","typing":"yes"}`, false},
		{"trailing data", `{"room_id":"!r:b.test","user_id":"@bob:a.test","typing":true} {}`, false},
		{"null", `null`, false},
		{"oversized", `{"room_id":"!r:b.test","user_id":"@bob:a.test","typing":true,"x":"` + strings.Repeat("x", 2000) + `"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := DecodeTyping("a.test", []byte(tc.content))
			if tc.ok != (err == nil) {
				t.Fatalf("DecodeTyping(%s) = %+v, %v; want ok=%v", tc.content, c, err, tc.ok)
			}
		})
	}
}

// TestTypingLeft: a notice shows for its timeout counted from when it was sent; one held back
// past it shows not at all; a sender's clock ahead does not lengthen it.
func TestTypingLeft(t *testing.T) {
	now := time.UnixMilli(1_000_000_000)
	for _, tc := range []struct {
		name      string
		timeoutMS int64
		sentAgo   time.Duration
		want      time.Duration
	}{
		{"fresh", 20000, 0, 20 * time.Second},
		{"held back 5 s", 20000, 5 * time.Second, 15 * time.Second},
		{"held back past its timeout", 20000, 25 * time.Second, -5 * time.Second},
		{"sender's clock ahead", 20000, -10 * time.Second, 20 * time.Second},
		{"no timeout", 0, 0, defaultTypingTimeout},
		{"negative timeout", -5, time.Second, defaultTypingTimeout - time.Second},
		{"timeout over the bound", 10 * 60 * 1000, 0, defaultTypingTimeout},
		{"at the bound", 120000, 0, maxTypingTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Typing{TimeoutMS: tc.timeoutMS}
			if got := c.Left(now.Add(-tc.sentAgo), now); got != tc.want {
				t.Fatalf("Left = %v, want %v", got, tc.want)
			}
		})
	}
}

func FuzzDecodeTyping(f *testing.F) {
	for _, s := range []string{
		`{"room_id":"!r:b.test","user_id":"@bob:a.test","typing":true,"timeout_ms":30000}`,
		`{"room_id":"!r:b.test","user_id":"@bob:a.test","typing":false}`,
		`{"room_id":"!r:b.test","user_id":"@bob:b.test","typing":true}`,
		`{"room_id":"!r:b.test","user_id":"@bob:a.test:b.test","typing":true}`,
		`{"room_id":1,"user_id":true}`, ``, `null`, `{}`, `[]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, content string) {
		c, err := DecodeTyping("a.test", []byte(content))
		if err != nil {
			return
		}
		if !strings.HasPrefix(c.UserID, "@") || userOrg(c.UserID) != "a.test" || !strings.HasPrefix(c.RoomID, "!") || len(c.RoomID) > 255 {
			t.Fatalf("accepted %+v", c)
		}
		if left := c.Left(time.Now(), time.Now()); left > maxTypingTimeout {
			t.Fatalf("shows for %v", left)
		}
	})
}
