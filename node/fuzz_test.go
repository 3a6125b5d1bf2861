package node

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"ping","id":"1"}`,
		`{"op":"sync","id":"2","since":"s5"}`,
		`{"op":"send","id":"3","room_id":"!a:test.local","txn_id":"t","content":{"msgtype":"m.text","body":"hi"}}`,
		`{"op":"send","id":"4","room_id":5}`,
		`{"op":"create_room","id":"5","name":"n","invite":["@a:b"],"federate":false,"visibility":"public"}`,
		`{"op":"history","id":"6","limit":1.5}`,
		`{"op":"typing","id":"7","typing":"yes"}`,
		`{"op":"nope","id":"8"}`,
		`{"op":1,"id":"9"}`,
		`{"op":null}`,
		`{"id":"10"}`,
		`{"op":"ping","id":{"x":1}}`,
		`{"op":"ping","op":"history"}`,
		`{"op":"ping","op":null}`,
		`{"OP":"ping","Id":"11"}`,
		`{"op":"ping","id":7}`,
		`{"op":"","id":"12"}`,
		`{"op":"__proto__"}`,
		`{"op":"auth","token":"t"}`,
		`[]`,
		`null`,
		`"ping"`,
		`{"op":"ping"} {}`,
		`{"op":"ping\u0000"}`,
		"{\"op\":\"\xff\"}",
		``,
		`{"op":"send","id":"3","room_id":"!a:test.local","txn_id":"t","content":{"body":"<b>"}}`,
		`{"op":"send","id":"3","content":null,"room_id":"r"}`,
		`{"op":"send","id":"3","content":[1,-2.5e3,true,"\u00e9"],"type":"m.x"}`,
		`{"op":"send","id":"3","content":{}}x`,
		`{"op":"send","id":"3","content":{},}`,
		`{"op":"send","id":"3","id":"4"}`,
		`{"op":"send", "id":"3"}`,
		`{"op":"se\"nd"}`,
		"{\"op\":\"s\xc3\xa9nd\",\"id\":\"\xe2\x80\xa8\"}",
		`{"op":"ping","Id":"3"}`,
		`{"op":"ping","limit":5}`,
		`{"op":"ping","since":"s1","before":"b","alias":"#a:b","visibility":"public","user_id":"@u:b","event_id":"$e","room":"#r:b"}`,
		`{}`,
		// The first frame (decodeAuthFrame).
		`{"op":"auth","id":"a1","token":"tok"}`,
		`{"op":"auth","id":7,"token":"tok"}`,
		`{"op":"auth","id":"a2","token":5}`,
		`{"op":"auth","id":"a3"}`,
		`{"OP":"AUTH","ID":"a4","Token":"t"}`,
		`{"Op":"auth","id":"a5","tOKEN":"t"}`,
		`{"op":"auth","id":"\ud800\u2028","token":"\u0000"}`,
		"{\"op\":\"auth\",\"id\":\"\xff\",\"token\":\"t\"}",
		`{"op":"auth","op":"ping","id":"a6"}`,
		`{"op":"auth","id":"a7","token":"t"}x`,
		`{"op":"ping","id":"a8","token":"t"}`,
		// since and before (parseToken, parseBackfillToken).
		`{"op":"sync","id":"s1","since":"s0"}`,
		`{"op":"sync","id":"s2","since":"s-0"}`,
		`{"op":"sync","id":"s3","since":"s+7"}`,
		`{"op":"sync","id":"s4","since":"s-1"}`,
		`{"op":"sync","id":"s5","since":"s9223372036854775807"}`,
		`{"op":"sync","id":"s6","since":"s9223372036854775808"}`,
		`{"op":"sync","id":"s7","since":"s"}`,
		`{"op":"sync","id":"s8","since":"p5"}`,
		`{"op":"sync","id":"s9","since":"s 5"}`,
		`{"op":"history","id":"h1","room_id":"!a:b","before":"p1"}`,
		`{"op":"history","id":"h2","before":"p0"}`,
		`{"op":"history","id":"h3","before":"p0x10"}`,
		`{"op":"history","id":"h4","before":"b$abc-_XYZ09"}`,
		`{"op":"history","id":"h5","before":"b$"}`,
		`{"op":"history","id":"h6","before":"b$a.b"}`,
		`{"op":"history","id":"h7","before":"b$a:b"}`,
		`{"op":"history","id":"h8","before":"b$\u00e9"}`,
		`{"op":"history","id":"h9","before":"B$abc"}`,
		`{"op":"history","id":"h10","before":"bb$abc"}`,
		`{"op":"history","id":"h11","before":"b$` + strings.Repeat("a", 254) + `"}`,
		`{"op":"history","id":"h12","before":"b$` + strings.Repeat("a", 255) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAuthFrame(t, data)
		checkStartTokens(t, string(data))
		// The plain-frame decoder takes only what encoding/json decodes, and decodes it the same.
		if pr, ok := decodePlainRequest(data); ok {
			var want request
			if err := json.Unmarshal(data, &want); err != nil || want.Op == "" || !reflect.DeepEqual(*pr, want) {
				t.Fatalf("decodePlainRequest(%q) = %+v; json.Unmarshal %+v, %v", data, *pr, want, err)
			}
		}
		r, id, oerr := decodeRequest(data)
		// The one-pass decoding answers what the field-by-field reading does, except for a
		// repeated op key ending in null: it keeps the string before, the other reads the null.
		fr, fid, ferr := decodeRefusedRequest(data)
		if !repeatsOp(data) {
			if (oerr == nil) != (ferr == nil) || id != fid || (oerr != nil && !reflect.DeepEqual(oerr, ferr)) || (r != nil && !reflect.DeepEqual(r, fr)) {
				t.Fatalf("decodeRequest(%q) = %+v, %q, %v; read field by field %+v, %q, %v", data, r, id, oerr, fr, fid, ferr)
			}
		}
		if (r == nil) == (oerr == nil) {
			t.Fatalf("decodeRequest(%q) = %v, %v: want exactly one of request and error", data, r, oerr)
		}
		if oerr != nil {
			if oerr.code != "M_BAD_JSON" && oerr.code != "M_INVALID_PARAM" {
				t.Fatalf("decodeRequest(%q): code %s", data, oerr.code)
			}
			if oerr.msg == "" {
				t.Fatalf("decodeRequest(%q): error without a message", data)
			}
			return
		}
		if r.Op != "sync" && ops[r.Op] == nil {
			t.Fatalf("decodeRequest(%q) returned unknown op %q", data, r.Op)
		}
		if id != r.ID {
			t.Fatalf("decodeRequest(%q): id %q, request id %q", data, id, r.ID)
		}
		checkStartTokens(t, r.Since)
		checkStartTokens(t, r.Before)
	})
}

// checkAuthFrame: decodeAuthFrame decodes the first frame as encoding/json does (so exactly
// as authenticate did inline); a frame it accepts is an auth, and the id it returns, accepted
// or not, comes back in the reply.
func checkAuthFrame(t *testing.T, data []byte) {
	t.Helper()
	req, ok := decodeAuthFrame(data)
	var want authFrame
	err := json.Unmarshal(data, &want)
	if wantOK := err == nil && want.Op == "auth"; ok != wantOK || req != want {
		t.Fatalf("decodeAuthFrame(%q) = %+v, %v; json.Unmarshal %+v, %v", data, req, ok, want, err)
	}
	if ok && (req.Op != "auth" || !json.Valid(data)) {
		t.Fatalf("decodeAuthFrame(%q) accepted %+v", data, req)
	}
	var reply struct {
		Op string `json:"op"`
		ID string `json:"id"`
	}
	code := "M_MISSING_TOKEN"
	frame := errorFrame(req.ID, code, "the first frame must be auth", nil)
	if ok {
		code = "ok"
		frame = okFrame(req.ID, map[string]any{"user_id": "@u:test.local"})
	}
	if err := json.Unmarshal(frame, &reply); err != nil || reply.ID != req.ID || (reply.Op == "ok") != ok {
		t.Fatalf("decodeAuthFrame(%q): %s reply %s does not carry id %q (%v)", data, code, frame, req.ID, err)
	}
}

var (
	decimalToken  = regexp.MustCompile(`^[+-]?[0-9]+$`)               // what strconv.ParseInt reads in base 10
	backfillToken = regexp.MustCompile(`^b(\$[A-Za-z0-9_-]{1,254})$`) // "b<event_id>", at most 256 bytes
)

// checkStartTokens: the since and before values a client sends. A "s<pos>" or "p<pos>" token
// that parses is the prefix and a decimal position >= 0 (the history's before = 0 is refused
// by opHistory itself), and the canonical spelling of that position reads back the same; a
// "b<event_id>" token parses exactly when it matches backfillToken, giving the event id ("$…").
func checkStartTokens(t *testing.T, tok string) {
	t.Helper()
	for _, prefix := range []byte{'s', 'p'} {
		n, ok := parseToken(tok, prefix)
		if !ok {
			continue
		}
		if n < 0 || tok[0] != prefix || !decimalToken.MatchString(tok[1:]) {
			t.Fatalf("parseToken(%q, %q) = %d, true", tok, prefix, n)
		}
		if m, ok := parseToken(string(prefix)+strconv.FormatInt(n, 10), prefix); !ok || m != n {
			t.Fatalf("parseToken(%q, %q) = %d, but %c%d reads %d, %v", tok, prefix, n, prefix, n, m, ok)
		}
	}
	id, ok := parseBackfillToken(tok)
	if m := backfillToken.FindStringSubmatch(tok); ok != (m != nil) || ok && (id != m[1] || !strings.HasPrefix(id, "$")) {
		t.Fatalf("parseBackfillToken(%q) = %q, %v; pattern %q", tok, id, ok, m)
	}
	if ok {
		if _, isPos := parseToken(tok, 'p'); isPos {
			t.Fatalf("%q is both a backfill and a position token", tok)
		}
	}
}

// repeatsOp reports whether data's object has more than one op key (matched as encoding/json
// matches field names, ignoring case).
func repeatsOp(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	n := 0
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		if key, ok := tok.(string); ok && strings.EqualFold(key, "op") {
			n++
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return false
		}
	}
	return n > 1
}

// FuzzHTTPBody: the bodies of /v1/register and /v1/login (untrusted) never panic readBody, and
// a body is either decoded or answered with an error status.
func FuzzHTTPBody(f *testing.F) {
	for _, s := range []string{`{"username":"alice","password":"correct horse"}`, `{"username":1}`, `[]`, `null`, ``,
		`{"username":"a","password":"b"} trailing`, "{\"username\":\"\xff\"}", `{"username":"` + strings.Repeat("a", 70000) + `"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/v1/register", bytes.NewReader(body))
		var c credentials
		ok := readBody(w, r, &c)
		if ok && w.Code != http.StatusOK {
			t.Fatalf("decoded but answered %d", w.Code)
		}
		if !ok && w.Code < 400 {
			t.Fatalf("refused with status %d", w.Code)
		}
		if len(body) > maxBodyBytes && ok {
			t.Fatal("a body over the limit was decoded")
		}
	})
}
