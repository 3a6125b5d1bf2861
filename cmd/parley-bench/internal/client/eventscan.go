package client

import (
	"bytes"
	"strconv"
	"unicode/utf8"
)

// The load tool reads every pushed event on every subscriber: at a million deliveries a
// second, encoding/json's reflection costs more CPU than the node under test spends sending
// them. scanEventFrame is a validating single-pass scanner for the one frame shape that is
// hot, {"op":"event","event":{…}}, filling only the fields the tool looks at. Anything it is
// not sure about (escapes in keys, case-folded keys, floats, deep nesting) makes it give up,
// and the caller falls back to encoding/json, so the two always agree (FuzzScanEventFrame).

const maxScanDepth = 64

type jsonScanner struct {
	b     []byte
	i     int
	depth int
	prev  *Event // the previous event of this connection: equal strings are reused, not allocated
}

// scanEventFrame decodes an event push into ev. ok is false when data is not an event push
// it can decode exactly as encoding/json would; then ev is unspecified.
func scanEventFrame(data []byte, ev *Event) (ok bool) {
	return scanEventFrameAfter(data, ev, nil)
}

// scanEventFrameAfter is scanEventFrame reusing prev's strings where they repeat (room,
// sender, type…), which saves an allocation per field per frame.
func scanEventFrameAfter(data []byte, ev, prev *Event) (ok bool) {
	if prev == nil {
		prev = &Event{}
	}
	s := jsonScanner{b: data, prev: prev}
	var op string
	var sawEvent, eventNull bool
	good := s.object(func(key []byte) bool {
		switch {
		case string(key) == "op":
			v, isNull, ok := s.str()
			if isNull {
				v = op // null leaves the field as it was
			}
			op = v
			return ok
		case string(key) == "event":
			sawEvent = true
			if s.null() { // encoding/json sets the pointer to nil; a later object starts afresh
				*ev, eventNull = Event{}, true
				return true
			}
			eventNull = false // a repeated object merges into the earlier one, as encoding/json does
			return s.event(ev)
		case string(key) == "id" || string(key) == "code" || string(key) == "message" ||
			string(key) == "user_id" || string(key) == "room_id" || string(key) == "event_id":
			_, _, ok := s.str() // not needed, but typed: a number here fails encoding/json too
			return ok
		case string(key) == "retry_after_ms":
			var n int64
			return s.intInto(&n)
		case foldsTo(key, "op", "event", "id", "code", "message", "retry_after_ms", "user_id", "room_id", "event_id"):
			return false // encoding/json would match it case-insensitively: let it
		default:
			return s.skip()
		}
	})
	if !good || op != "event" || !sawEvent || eventNull {
		return false
	}
	s.ws()
	return s.i == len(s.b)
}

func (s *jsonScanner) event(ev *Event) bool {
	if s.peek() != '{' {
		return false // encoding/json rejects a non-object for a struct pointer
	}
	return s.object(func(key []byte) bool {
		switch string(key) {
		case "event_id":
			return s.strInto(&ev.EventID)
		case "room_id":
			return s.strLike(&ev.RoomID, s.prev.RoomID)
		case "sender":
			return s.strLike(&ev.Sender, s.prev.Sender)
		case "origin":
			return s.strLike(&ev.Origin, s.prev.Origin)
		case "type":
			return s.strLike(&ev.Type, s.prev.Type)
		case "origin_ts":
			return s.intInto(&ev.OriginTS)
		case "stream_pos":
			return s.intInto(&ev.StreamPos)
		case "content":
			if s.null() {
				return true
			}
			if s.peek() != '{' {
				return false
			}
			return s.object(func(key []byte) bool {
				switch string(key) {
				case "msgtype":
					return s.strLike(&ev.Content.MsgType, s.prev.Content.MsgType)
				case "body":
					return s.strInto(&ev.Content.Body)
				case "membership":
					return s.strLike(&ev.Content.Membership, s.prev.Content.Membership)
				}
				if foldsTo(key, "msgtype", "body", "membership") {
					return false
				}
				return s.skip()
			})
		case "unsigned":
			if s.null() {
				return true
			}
			if s.peek() != '{' {
				return false
			}
			return s.object(func(key []byte) bool {
				if string(key) == "txn_id" {
					return s.strInto(&ev.Unsigned.TxnID)
				}
				if foldsTo(key, "txn_id") {
					return false
				}
				return s.skip()
			})
		}
		if foldsTo(key, "event_id", "room_id", "sender", "origin", "type", "origin_ts", "stream_pos", "content", "unsigned") {
			return false
		}
		return s.skip()
	})
}

// foldsTo reports whether key matches one of names only case-insensitively: encoding/json
// would fill the field, so such keys are left to it. (rawKey already refused non-ASCII keys,
// which covers the Unicode folds.)
func foldsTo(key []byte, names ...string) bool {
	upper := false
	for _, c := range key {
		upper = upper || (c >= 'A' && c <= 'Z')
	}
	if !upper {
		return false
	}
	for _, n := range names {
		if bytes.EqualFold(key, []byte(n)) {
			return true
		}
	}
	return false
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScanner) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *jsonScanner) null() bool {
	s.ws()
	if bytes.HasPrefix(s.b[s.i:], []byte("null")) {
		s.i += 4
		return true
	}
	return false
}

// object walks an object's members; member must consume the value of the key it is given.
func (s *jsonScanner) object(member func(key []byte) bool) bool {
	if s.peek() != '{' {
		return false
	}
	s.depth++
	if s.depth > maxScanDepth {
		return false
	}
	s.i++
	if s.peek() == '}' {
		s.i++
		s.depth--
		return true
	}
	for {
		key, ok := s.rawKey()
		if !ok || s.peek() != ':' {
			return false
		}
		s.i++
		if !member(key) {
			return false
		}
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			s.depth--
			return true
		default:
			return false
		}
	}
}

// rawKey reads a key without escapes; a key with escapes or odd bytes makes the scan give up.
func (s *jsonScanner) rawKey() ([]byte, bool) {
	if s.peek() != '"' {
		return nil, false
	}
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		c := s.b[j]
		switch {
		case c == '"':
			s.i = j + 1
			return s.b[start:j], true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, false
		}
	}
	return nil, false
}

// special marks the bytes a string scan must look at: the end quote, escapes, control
// characters (invalid in JSON strings) and non-ASCII (UTF-8 to validate).
var special = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = c == '"' || c == '\\' || c < 0x20 || c >= 0x80
	}
	return t
}()

// rawStr scans a string and returns its raw bytes and whether they need unescaping.
func (s *jsonScanner) rawStr() (raw []byte, simple, ok bool) {
	if s.peek() != '"' {
		return nil, false, false
	}
	start := s.i + 1
	simple = true
	j := start
	for j < len(s.b) {
		for j < len(s.b) && !special[s.b[j]] {
			j++
		}
		if j >= len(s.b) {
			break
		}
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			return s.b[start:j], simple, true
		case c == '\\':
			simple = false
			j += 2 // skip the escaped byte; unescape validates it
		case c < 0x20:
			return nil, false, false
		default: // non-ASCII
			simple = false
			j++
		}
	}
	return nil, false, false
}

// str reads a string (or null). A string with invalid UTF-8 makes it give up (encoding/json
// would substitute U+FFFD).
func (s *jsonScanner) str() (v string, isNull, ok bool) {
	if s.null() {
		return "", true, true
	}
	raw, simple, ok := s.rawStr()
	if !ok {
		return "", false, false
	}
	if simple {
		return string(raw), false, true
	}
	if !utf8.Valid(raw) {
		return "", false, false
	}
	return unescape(raw)
}

// skipStr validates a string without building it.
func (s *jsonScanner) skipStr() bool {
	raw, simple, ok := s.rawStr()
	if !ok || simple {
		return ok
	}
	if !utf8.Valid(raw) {
		return false
	}
	_, _, ok = unescape(raw)
	return ok
}

func (s *jsonScanner) strInto(dst *string) bool {
	v, isNull, ok := s.str()
	if ok && !isNull {
		*dst = v
	}
	return ok
}

// strLike is strInto that reuses like when the value is the same string.
func (s *jsonScanner) strLike(dst *string, like string) bool {
	s.ws()
	if like != "" && s.i+len(like)+2 <= len(s.b) && s.b[s.i] == '"' && s.b[s.i+1+len(like)] == '"' &&
		string(s.b[s.i+1:s.i+1+len(like)]) == like && !needsUnescape(like) {
		*dst = like
		s.i += len(like) + 2
		return true
	}
	return s.strInto(dst)
}

// needsUnescape: a string whose raw JSON form differs from its value.
func needsUnescape(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == '"' || c == '\\' || c < 0x20 || c >= 0x80 {
			return true
		}
	}
	return false
}

// unescape decodes a string body with escapes; surrogate escapes make it give up.
func unescape(raw []byte) (string, bool, bool) {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(raw) {
			return "", false, false
		}
		switch raw[i] {
		case '"', '\\', '/':
			out = append(out, raw[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if i+5 > len(raw) {
				return "", false, false
			}
			r, err := strconv.ParseUint(string(raw[i+1:i+5]), 16, 32)
			if err != nil || (r >= 0xD800 && r <= 0xDFFF) {
				return "", false, false
			}
			out = utf8.AppendRune(out, rune(r))
			i += 4
		default:
			return "", false, false
		}
	}
	return string(out), false, true
}

// intInto reads an integer (or null) the way encoding/json fills an int64.
func (s *jsonScanner) intInto(dst *int64) bool {
	if s.null() {
		return true
	}
	s.ws()
	start := s.i
	if !s.number() {
		return false
	}
	v, err := strconv.ParseInt(string(s.b[start:s.i]), 10, 64)
	if err != nil {
		return false // a float or out of range: encoding/json errors too, but let it say so
	}
	*dst = v
	return true
}

// number consumes a JSON number, validating its grammar.
func (s *jsonScanner) number() bool {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	s.i = i
	return true
}

// skip consumes any JSON value, validating it.
func (s *jsonScanner) skip() bool {
	switch c := s.peek(); {
	case c == '{':
		return s.object(func([]byte) bool { return s.skip() })
	case c == '[':
		s.depth++
		if s.depth > maxScanDepth {
			return false
		}
		s.i++
		if s.peek() == ']' {
			s.i++
			s.depth--
			return true
		}
		for {
			if !s.skip() {
				return false
			}
			switch s.peek() {
			case ',':
				s.i++
			case ']':
				s.i++
				s.depth--
				return true
			default:
				return false
			}
		}
	case c == '"':
		return s.skipStr()
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
				s.i += len(lit)
				return true
			}
		}
		return false
	}
}
