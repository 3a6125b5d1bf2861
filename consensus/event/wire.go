package event

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"
)

// AppendJSON appends e exactly as json.Marshal encodes it (FuzzAppendJSONMatchesMarshal holds
// the two together), without reflection: every committed event is encoded for the store on
// every node and again for every push frame, so encoding/json's reflection showed up in
// profiles of the commit path.
func (e *Event) AppendJSON(dst []byte) ([]byte, error) {
	if e == nil {
		return append(dst, "null"...), nil
	}
	dst = append(dst, `{"event_id":`...)
	dst = appendMarshalString(dst, e.EventID)
	dst = append(dst, `,"room_id":`...)
	dst = appendMarshalString(dst, e.RoomID)
	dst = append(dst, `,"sender":`...)
	dst = appendMarshalString(dst, e.Sender)
	dst = append(dst, `,"origin":`...)
	dst = appendMarshalString(dst, e.Origin)
	dst = append(dst, `,"origin_ts":`...)
	dst = strconv.AppendInt(dst, e.OriginTS, 10)
	dst = append(dst, `,"type":`...)
	dst = appendMarshalString(dst, e.Type)
	if e.StateKey != nil {
		dst = append(dst, `,"state_key":`...)
		dst = appendMarshalString(dst, *e.StateKey)
	}
	dst = append(dst, `,"content":`...)
	var err error
	if dst, err = appendRawMessage(dst, e.Content); err != nil {
		return nil, fmt.Errorf("event %s: content: %w", e.EventID, err)
	}
	if e.Redacts != "" {
		dst = append(dst, `,"redacts":`...)
		dst = appendMarshalString(dst, e.Redacts)
	}
	dst = append(dst, `,"prev_events":`...)
	dst = appendStrings(dst, e.PrevEvents)
	dst = append(dst, `,"depth":`...)
	dst = strconv.AppendInt(dst, e.Depth, 10)
	dst = append(dst, `,"hashes":{"sha256":`...)
	dst = appendMarshalString(dst, e.Hashes.SHA256)
	dst = append(dst, '}')
	if len(e.Signatures) > 0 {
		dst = append(dst, `,"signatures":`...)
		dst = appendSignatures(dst, e.Signatures)
	}
	if e.StreamPos != 0 {
		dst = append(dst, `,"stream_pos":`...)
		dst = strconv.AppendInt(dst, e.StreamPos, 10)
	}
	if e.Unsigned != nil {
		dst = append(dst, `,"unsigned":{`...)
		comma := false
		if e.Unsigned.TxnID != "" {
			dst = append(dst, `"txn_id":`...)
			dst = appendMarshalString(dst, e.Unsigned.TxnID)
			comma = true
		}
		if e.Unsigned.RedactedBecause != nil {
			if comma {
				dst = append(dst, ',')
			}
			dst = append(dst, `"redacted_because":`...)
			if dst, err = e.Unsigned.RedactedBecause.AppendJSON(dst); err != nil {
				return nil, err
			}
		}
		dst = append(dst, '}')
	}
	return append(dst, '}'), nil
}

func appendStrings(dst []byte, ss []string) []byte {
	if ss == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '[')
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendMarshalString(dst, s)
	}
	return append(dst, ']')
}

// appendSignatures encodes origin -> key id -> signature with sorted keys, as encoding/json
// sorts map keys; a nil inner map is null there too.
func appendSignatures(dst []byte, sigs map[string]map[string]string) []byte {
	return AppendSortedObject(dst, sigs, func(dst []byte, inner map[string]string) []byte {
		if inner == nil {
			return append(dst, "null"...)
		}
		return AppendSortedObject(dst, inner, appendMarshalString)
	})
}

// AppendSortedObject appends m as json.Marshal encodes a map with string keys: keys sorted,
// each value written by appendValue.
func AppendSortedObject[V any](dst []byte, m map[string]V, appendValue func([]byte, V) []byte) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendMarshalString(dst, k)
		dst = append(dst, ':')
		dst = appendValue(dst, m[k])
	}
	return append(dst, '}')
}

var errEmptyRaw = errors.New("unexpected end of JSON input")

// AppendRawMessage appends raw as json.Marshal writes a json.RawMessage field (see
// appendRawMessage), which is also what decoding that JSON gives back: the Raft log's binary
// batch format stores event content in this form to decode exactly as its old JSON did.
func AppendRawMessage(dst []byte, raw json.RawMessage) ([]byte, error) {
	return appendRawMessage(dst, raw)
}

// appendRawMessage is what json.Marshal does with a json.RawMessage field: null for nil, else
// the value checked, compacted and HTML-escaped (<, >, &, U+2028 and U+2029 inside strings).
// Content already in that form, as every committed event's is, is copied after one pass.
func appendRawMessage(dst []byte, raw json.RawMessage) ([]byte, error) {
	if raw == nil {
		return append(dst, "null"...), nil
	}
	if IsMarshaled(raw) {
		return append(dst, raw...), nil
	}
	return marshalRawMessage(dst, raw)
}

// marshalRawMessage is appendRawMessage for content in any form: json.Valid, then compacting
// and escaping in one scan.
func marshalRawMessage(dst []byte, raw json.RawMessage) ([]byte, error) {
	if len(raw) == 0 {
		return nil, errEmptyRaw
	}
	if !json.Valid(raw) {
		return nil, errors.New("invalid JSON")
	}
	const hexDigits = "0123456789abcdef"
	start := 0
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case inString && c == '\\':
			i++ // the escaped byte is never special
		case c == '"':
			inString = !inString
		case c == '<' || c == '>' || c == '&':
			dst = append(dst, raw[start:i]...)
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			start = i + 1
		case c == 0xe2 && i+2 < len(raw) && raw[i+1] == 0x80 && raw[i+2]&^1 == 0xa8:
			dst = append(dst, raw[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[raw[i+2]&0xf])
			i += 2
			start = i + 1
		case !inString && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			dst = append(dst, raw[start:i]...)
			start = i + 1
		}
	}
	return append(dst, raw[start:]...), nil
}

// htmlSafe marks the ASCII bytes json.Marshal writes unescaped.
var htmlSafe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// AppendMarshalString appends s encoded as json.Marshal encodes a string, for the state
// machine's own reflection-free encoders.
func AppendMarshalString(dst []byte, s string) []byte { return appendMarshalString(dst, s) }

// appendMarshalString encodes s as json.Marshal does: HTML-safe escapes, each invalid UTF-8
// byte replaced by \ufffd, U+2028 and U+2029 escaped.
func appendMarshalString(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if htmlSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
