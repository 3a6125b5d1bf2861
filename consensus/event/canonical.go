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

// ErrNotCanonicalizable is wrapped by every error Canonical returns.
var ErrNotCanonicalizable = errors.New("event: JSON not canonicalizable")

// maxSafeInt bounds integers to what every JSON implementation (notably
// JavaScript's float64 numbers) represents exactly, as Matrix does.
const maxSafeInt = 1<<53 - 1

// member and object keep a decoded JSON object as a list rather than a map so
// duplicate keys stay visible until they are refused.
type member struct {
	key string
	val any
}

type object []member

// Canonical re-encodes any JSON document as canonical JSON. It refuses invalid
// JSON, invalid UTF-8, duplicate object keys, non-integer numbers and integers
// outside [-(2^53-1), 2^53-1] (ErrNotCanonicalizable wrapped with detail).
func Canonical(raw []byte) ([]byte, error) {
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
	if err := checkSurrogates(raw); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := parse(dec)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(raw))
	encode(&buf, v)
	return buf.Bytes(), nil
}

// CanonicalValue marshals v with encoding/json then canonicalizes it.
func CanonicalValue(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	return Canonical(raw)
}

// parse reads one JSON value from a syntactically valid token stream.
func parse(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
	}
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			arr := []any{}
			for dec.More() {
				v, err := parse(dec)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			return arr, closeDelim(dec)
		}
		var obj object
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
			}
			k, ok := kt.(string)
			if !ok {
				return nil, fmt.Errorf("%w: object key %v is not a string", ErrNotCanonicalizable, kt)
			}
			v, err := parse(dec)
			if err != nil {
				return nil, err
			}
			obj = append(obj, member{k, v})
		}
		// Byte order of UTF-8 equals code point order; after sorting,
		// duplicates are neighbours.
		slices.SortFunc(obj, func(a, b member) int { return strings.Compare(a.key, b.key) })
		for i := 1; i < len(obj); i++ {
			if obj[i].key == obj[i-1].key {
				return nil, fmt.Errorf("%w: duplicate key %q", ErrNotCanonicalizable, obj[i].key)
			}
		}
		return obj, closeDelim(dec)
	case json.Number:
		return parseInt(t)
	case string, bool, nil:
		return t, nil
	}
	return nil, fmt.Errorf("%w: unexpected token %v", ErrNotCanonicalizable, tok)
}

func closeDelim(dec *json.Decoder) error {
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotCanonicalizable, err)
	}
	return nil
}

// parseInt accepts only integer syntax: "1.0" and "1e3" are refused rather
// than normalized, so a number has exactly one accepted spelling per value
// (besides -0, which becomes 0).
func parseInt(n json.Number) (int64, error) {
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

// checkSurrogates refuses \u escapes that are not part of a valid UTF-16
// surrogate pair. The decoder would turn them into U+FFFD, so they cannot be
// represented in UTF-8 and would collide with a literal U+FFFD. raw must be
// valid JSON.
func checkSurrogates(raw []byte) error {
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
			r := hex4(raw[i+1 : i+5])
			i += 4
			if !utf16.IsSurrogate(r) {
				continue
			}
			// A high surrogate must be followed directly by an escaped low one.
			if r >= 0xdc00 || i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return fmt.Errorf("%w: lone surrogate \\u%04x", ErrNotCanonicalizable, r)
			}
			if lo := hex4(raw[i+3 : i+7]); lo < 0xdc00 || lo > 0xdfff {
				return fmt.Errorf("%w: lone surrogate \\u%04x", ErrNotCanonicalizable, r)
			}
			i += 6
		}
	}
	return nil
}

// hex4 decodes four hex digits already validated by the JSON syntax check.
func hex4(b []byte) rune {
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

func encode(buf *bytes.Buffer, v any) {
	switch v := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(v))
	case int64:
		buf.WriteString(strconv.FormatInt(v, 10))
	case string:
		writeString(buf, v)
	case []any:
		buf.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			encode(buf, e)
		}
		buf.WriteByte(']')
	case object:
		buf.WriteByte('{')
		for i, m := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, m.key)
			buf.WriteByte(':')
			encode(buf, m.val)
		}
		buf.WriteByte('}')
	default:
		panic(fmt.Sprintf("event: encode: unexpected %T", v))
	}
}

// writeString uses the shortest escapes: only '"', '\\' and control
// characters are escaped; everything else (including <, >, &, U+2028 and
// U+2029, which encoding/json escapes) is written as literal UTF-8.
func writeString(buf *bytes.Buffer, s string) {
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
