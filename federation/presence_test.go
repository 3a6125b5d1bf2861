package federation

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

func TestDecodePresence(t *testing.T) {
	for _, tc := range []struct {
		name, origin, content string
		ok                    bool
	}{
		{"online", "a.test", `{"user_id":"@bob:a.test","presence":"online"}`, true},
		{"offline", "a.test", `{"user_id":"@bob:a.test","presence":"offline"}`, true},
		{"user of another org", "a.test", `{"user_id":"@bob:b.test","presence":"online"}`, false},
		{"user of a sub-domain", "a.test", `{"user_id":"@bob:x.a.test","presence":"online"}`, false},
		{"origin as a suffix", "a.test", `{"user_id":"@bob:ba.test","presence":"online"}`, false},
		{"no sigil", "a.test", `{"user_id":"bob:a.test","presence":"online"}`, false},
		{"no org", "a.test", `{"user_id":"@bob","presence":"online"}`, false},
		{"bad localpart", "a.test", `{"user_id":"@Bob:a.test","presence":"online"}`, false},
		{"empty localpart", "a.test", `{"user_id":"@:a.test","presence":"online"}`, false},
		{"long localpart", "a.test", `{"user_id":"@` + strings.Repeat("b", 65) + `:a.test","presence":"online"}`, false},
		{"unavailable", "a.test", `{"user_id":"@bob:a.test","presence":"unavailable"}`, false},
		{"empty status", "a.test", `{"user_id":"@bob:a.test","presence":""}`, false},
		{"upper case status", "a.test", `{"user_id":"@bob:a.test","presence":"ONLINE"}`, false},
		{"no status", "a.test", `{"user_id":"@bob:a.test"}`, false},
		{"unknown field", "a.test", `{"user_id":"@bob:a.test","presence":"online","status_msg":"hi"}`, false},
		{"trailing data", "a.test", `{"user_id":"@bob:a.test","presence":"online"} {}`, false},
		{"not an object", "a.test", `["@bob:a.test","online"]`, false},
		{"null", "a.test", `null`, false},
		{"oversized", "a.test", `{"user_id":"@bob:a.test","presence":"online","x":"` + strings.Repeat("x", 2000) + `"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := DecodePresence(tc.origin, []byte(tc.content))
			if tc.ok != (err == nil) {
				t.Fatalf("DecodePresence(%s) = %+v, %v; want ok=%v", tc.content, p, err, tc.ok)
			}
			if err == nil && (p.UserID != "@bob:a.test" || (p.Presence != "online" && p.Presence != "offline")) {
				t.Fatalf("decoded %+v", p)
			}
		})
	}
}

func FuzzDecodePresence(f *testing.F) {
	for _, s := range []string{
		`{"user_id":"@bob:a.test","presence":"online"}`,
		`{"user_id":"@bob:a.test","presence":"offline"}`,
		`{"user_id":"@bob:b.test","presence":"online"}`,
		`{"user_id":"@bob:a.test","presence":"unavailable"}`,
		`{"user_id":"@bob:a.test:b.test","presence":"online"}`,
		`{"user_id":"@bob:a.test","presence":"online","x":1}`,
		`{"user_id":"@\u0000:a.test","presence":"online"}`,
		`{"user_id":1,"presence":true}`,
		``, `null`, `{}`, `[]`, `{"user_id":` + strings.Repeat(`[`, 3000) + `}`,
	} {
		f.Add("a.test", []byte(s))
	}
	f.Fuzz(func(t *testing.T, origin string, content []byte) {
		p, err := DecodePresence(origin, content)
		if err != nil {
			if p != nil {
				t.Fatalf("DecodePresence returned both %+v and %v", p, err)
			}
			return
		}
		switch {
		case len(content) > maxPresenceBytes:
			t.Fatalf("accepted %d bytes", len(content))
		case p.Presence != "online" && p.Presence != "offline":
			t.Fatalf("accepted status %q", p.Presence)
		case userOrg(p.UserID) != origin || !strings.HasPrefix(p.UserID, "@"):
			t.Fatalf("accepted user %q from origin %q", p.UserID, origin)
		}
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodePresence(origin, again); err != nil {
			t.Fatalf("re-encoded presence refused: %v\n%s", err, again)
		}
	})
}

// leaveParams is a valid send_leave parameter object: bob of a.test declining.
func leaveParams(tb testing.TB, p fuzzPeer) []byte {
	tb.Helper()
	e := signedPDU(tb, p, "a.test", "m.room.member", strp("@alice:a.test"), `{"membership":"leave"}`)
	raw, err := json.Marshal(sendLeaveParams{Event: e})
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

func TestDecodeSendLeave(t *testing.T) {
	p := newFuzzPeer(t)
	if e, err := decodeSendLeave(leaveParams(t, p)); err != nil || membershipOf(e) != state.Leave {
		t.Fatalf("a valid leave: %v", err)
	}
	for name, params := range map[string][]byte{
		"someone else's leave": mustJSON(t, sendLeaveParams{Event: signedPDU(t, p, "a.test", "m.room.member", strp("@carol:a.test"), `{"membership":"leave"}`)}),
		"a join":               mustJSON(t, sendLeaveParams{Event: signedPDU(t, p, "a.test", "m.room.member", strp("@alice:a.test"), `{"membership":"join"}`)}),
		"a message":            mustJSON(t, sendLeaveParams{Event: signedPDU(t, p, "a.test", "m.room.message", nil, `{"body":"x","msgtype":"m.text"}`)}),
		"no event":             []byte(`{}`),
		"null event":           []byte(`{"event":null}`),
		"unknown field":        mutateJSON(t, leaveParams(t, p), func(m map[string]any) { m["x"] = 1 }),
	} {
		if _, err := decodeSendLeave(params); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func FuzzDecodeSendLeave(f *testing.F) {
	p := newFuzzPeer(f)
	valid := leaveParams(f, p)
	f.Add(valid)
	for _, mut := range []func(m map[string]any){
		func(m map[string]any) { m["event"] = nil },
		func(m map[string]any) { m["event"].(map[string]any)["state_key"] = nil },
		func(m map[string]any) { m["event"].(map[string]any)["content"] = map[string]any{"membership": 7} },
		func(m map[string]any) { m["event"].(map[string]any)["content"] = "leave" },
		func(m map[string]any) { m["event"].(map[string]any)["type"] = "m.room.message" },
	} {
		f.Add(mutateJSON(f, valid, mut))
	}
	for _, s := range []string{``, `null`, `{}`, `{"event":{}}`, `{"event":` + strings.Repeat(`{"a":`, 3000) + `}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, params []byte) {
		e, err := decodeSendLeave(params)
		if err != nil {
			return
		}
		if e.Type != "m.room.member" || e.StateKey == nil || *e.StateKey != e.Sender || membershipOf(e) != state.Leave {
			t.Fatalf("accepted %+v", e)
		}
		// What sendLeave runs next on it, short of the room lookup.
		_ = event.Check(e)
		_ = checkContent(e)
	})
}
