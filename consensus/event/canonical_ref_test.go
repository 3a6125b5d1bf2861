package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// This file keeps the previous, encoding/json based implementation of
// Canonical and of the event forms built on it, unchanged except for names,
// so that fuzz targets can hold the fast implementation to it byte for byte.

// refMember and refObject keep a decoded JSON object as a list rather than a
// map so duplicate keys stay visible until they are refused.
type refMember struct {
	key string
	val any
}

type refObject []refMember

// canonicalReference is the encoding/json based Canonical this package used
// before the hand-written parser, kept as the oracle for differential tests.
func canonicalReference(raw []byte) ([]byte, error) {
	// The decoder silently replaces invalid UTF-8 with U+FFFD, which would let
	// two different inputs share one canonical form.
	if !utf8.Valid(raw) {
		return nil, fmt.Errorf("%w: invalid UTF-8", ErrNotCanonicalizable)
	}
	// A full syntax check up front gives precise errors and rejects trailing
	// data, which a token stream would leave unread.
	if err := json.Unmarshal(raw, new(json.RawMessage)); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
	}
	if err := refCheckSurrogates(raw); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := refParse(dec)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(raw))
	refEncode(&buf, v)
	return buf.Bytes(), nil
}

// canonicalValueReference is CanonicalValue on top of canonicalReference.
func canonicalValueReference(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	return canonicalReference(raw)
}

// parse reads one JSON value from a syntactically valid token stream.
func refParse(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
	}
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			arr := []any{}
			for dec.More() {
				v, err := refParse(dec)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			return arr, refCloseDelim(dec)
		}
		var obj refObject
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
			}
			k, ok := kt.(string)
			if !ok {
				return nil, fmt.Errorf("%w: object key %v is not a string", ErrNotCanonicalizable, kt)
			}
			v, err := refParse(dec)
			if err != nil {
				return nil, err
			}
			obj = append(obj, refMember{k, v})
		}
		// Byte order of UTF-8 equals code point order; after sorting,
		// duplicates are neighbours.
		slices.SortFunc(obj, func(a, b refMember) int { return strings.Compare(a.key, b.key) })
		for i := 1; i < len(obj); i++ {
			if obj[i].key == obj[i-1].key {
				return nil, fmt.Errorf("%w: duplicate key %q", ErrNotCanonicalizable, obj[i].key)
			}
		}
		return obj, refCloseDelim(dec)
	case json.Number:
		return refParseInt(t)
	case string, bool, nil:
		return t, nil
	}
	return nil, fmt.Errorf("%w: unexpected token %v", ErrNotCanonicalizable, tok)
}

func refCloseDelim(dec *json.Decoder) error {
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
	}
	return nil
}

// refParseInt accepts only integer syntax: "1.0" and "1e3" are refused rather
// than normalized, so a number has exactly one accepted spelling per value
// (besides -0, which becomes 0).
func refParseInt(n json.Number) (int64, error) {
	s := string(n)
	if strings.ContainsAny(s, ".eE") {
		return 0, fmt.Errorf("%w: non-integer number %s", ErrNotCanonicalizable, s)
	}
	i, err := strconv.ParseInt(s, 10, 64)
	if err != nil || i > maxSafeInt || i < -maxSafeInt {
		return 0, fmt.Errorf("%w: integer %s out of range", ErrNotCanonicalizable, s)
	}
	return i, nil
}

// refCheckSurrogates refuses \u escapes that are not part of a valid UTF-16
// surrogate pair. The decoder would turn them into U+FFFD, so they cannot be
// represented in UTF-8 and would collide with a literal U+FFFD. raw must be
// valid JSON.
func refCheckSurrogates(raw []byte) error {
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case !inString:
			inString = c == '"'
		case c == '"':
			inString = false
		case c == '\\':
			i++
			if raw[i] != 'u' {
				continue
			}
			r := refHex4(raw[i+1 : i+5])
			i += 4
			if !utf16.IsSurrogate(r) {
				continue
			}
			// A high surrogate must be followed directly by an escaped low one.
			if r >= 0xdc00 || i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return fmt.Errorf("%w: lone surrogate \\u%04x", ErrNotCanonicalizable, r)
			}
			if lo := refHex4(raw[i+3 : i+7]); lo < 0xdc00 || lo > 0xdfff {
				return fmt.Errorf("%w: lone surrogate \\u%04x", ErrNotCanonicalizable, r)
			}
			i += 6
		}
	}
	return nil
}

// refHex4 decodes four hex digits already validated by the JSON syntax check.
func refHex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c <= '9':
			r |= rune(c - '0')
		case c >= 'a':
			r |= rune(c - 'a' + 10)
		default:
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}

func refEncode(buf *bytes.Buffer, v any) {
	switch v := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(v))
	case int64:
		buf.WriteString(strconv.FormatInt(v, 10))
	case string:
		refWriteString(buf, v)
	case []any:
		buf.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			refEncode(buf, e)
		}
		buf.WriteByte(']')
	case refObject:
		buf.WriteByte('{')
		for i, m := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			refWriteString(buf, m.key)
			buf.WriteByte(':')
			refEncode(buf, m.val)
		}
		buf.WriteByte('}')
	default:
		panic(fmt.Sprintf("event: encode: unexpected %T", v))
	}
}

// refWriteString uses the shortest escapes: only '"', '\\' and control
// characters are escaped; everything else (including <, >, &, U+2028 and
// U+2029, which encoding/json escapes) is written as literal UTF-8.
func refWriteString(buf *bytes.Buffer, s string) {
	const hexDigits = "0123456789abcdef"
	buf.WriteByte('"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		buf.WriteString(s[start:i])
		switch c {
		case '"', '\\':
			buf.WriteByte('\\')
			buf.WriteByte(c)
		case '\b':
			buf.WriteString(`\b`)
		case '\f':
			buf.WriteString(`\f`)
		case '\n':
			buf.WriteString(`\n`)
		case '\r':
			buf.WriteString(`\r`)
		case '\t':
			buf.WriteString(`\t`)
		default:
			buf.WriteString(`\u00`)
			buf.WriteByte(hexDigits[c>>4])
			buf.WriteByte(hexDigits[c&0xf])
		}
		start = i + 1
	}
	buf.WriteString(s[start:])
	buf.WriteByte('"')
}

// contentHashFormReference is the previous ContentHash minus the base64/SHA-256
// step: the canonical bytes that get hashed.
func contentHashFormReference(e *Event) ([]byte, error) {
	return canonicalValueReference(newForm(e, e.Content))
}

// redactedFormReference is the previous RedactedForm.
func redactedFormReference(e *Event) ([]byte, error) {
	if e == nil {
		return nil, errNilEvent
	}
	content, err := strippedContentReference(e)
	if err != nil {
		return nil, fmt.Errorf("redacted form: %w", err)
	}
	f := newForm(e, content)
	h := e.Hashes
	f.Hashes = &h
	return canonicalValueReference(f)
}

// isRedactedContentReference is the previous IsRedactedContent.
func isRedactedContentReference(e *Event) bool {
	if e == nil {
		return false
	}
	obj, err := contentObjectReference(e.Content)
	if err != nil {
		return false
	}
	kept := keptContent[e.Type]
	for k := range obj {
		if !slices.Contains(kept, k) {
			return false
		}
	}
	return true
}

// contentObjectReference is the previous contentObject.
func contentObjectReference(content json.RawMessage) (map[string]json.RawMessage, error) {
	canon, err := canonicalReference(content)
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(canon, &obj); err != nil || obj == nil {
		return nil, errors.New("content: not a JSON object")
	}
	return obj, nil
}

// strippedContentReference is the previous strippedContent.
func strippedContentReference(e *Event) (json.RawMessage, error) {
	obj, err := contentObjectReference(e.Content)
	if err != nil {
		return nil, err
	}
	kept := make(map[string]json.RawMessage)
	for _, k := range keptContent[e.Type] {
		if v, ok := obj[k]; ok {
			kept[k] = v
		}
	}
	return canonicalValueReference(kept)
}
