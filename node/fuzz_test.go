package node

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
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
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
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
	})
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
