package event

import "bytes"

// IsMarshaled reports whether raw is one JSON value exactly as json.Marshal writes a
// json.RawMessage: valid, compact and HTML-escaped, so that appendRawMessage would copy it
// unchanged. One hand-written pass: every event's content is in that form by the time it is
// committed (the Raft log's decoder refuses anything else), and json.Valid followed by the
// escaping scan took most of the time of encoding an event for the store on every node.
// FuzzIsMarshaled holds it to that slower pair.
func IsMarshaled(raw []byte) bool {
	return MarshaledPrefix(raw) == len(raw)
}

// MarshaledPrefix returns the length of the JSON value in json.Marshal's form (see IsMarshaled)
// that b starts with, or -1 when it starts with none: a decoder finds where such a value ends
// in one pass.
func MarshaledPrefix(b []byte) int {
	p := jsonChecker{b: b}
	return p.value(0)
}

// jsonChecker's methods check the JSON value starting at b[i] and return the index after it,
// or -1. Beyond json.Valid they refuse whitespace between tokens and, in strings, <, >, & and
// U+2028 and U+2029, which json.Marshal escapes.
type jsonChecker struct {
	b     []byte
	depth int
}

// maxJSONDepth is json.Valid's nesting limit (encoding/json's maxNestingDepth).
const maxJSONDepth = 10000

func (p *jsonChecker) value(i int) int {
	if i >= len(p.b) {
		return -1
	}
	switch p.b[i] {
	case '{':
		return p.container(i, '}')
	case '[':
		return p.container(i, ']')
	case '"':
		return p.string(i)
	case 't':
		return p.literal(i, "true")
	case 'f':
		return p.literal(i, "false")
	case 'n':
		return p.literal(i, "null")
	default:
		return p.number(i)
	}
}

func (p *jsonChecker) container(i int, end byte) int {
	if p.depth++; p.depth > maxJSONDepth {
		return -1
	}
	i = p.elements(i+1, end)
	p.depth--
	return i
}

// elements checks the members of an object or the elements of an array, and its end.
func (p *jsonChecker) elements(i int, end byte) int {
	if i < len(p.b) && p.b[i] == end {
		return i + 1
	}
	for {
		if end == '}' {
			if i = p.string(i); i < 0 || i >= len(p.b) || p.b[i] != ':' {
				return -1
			}
			i++
		}
		if i = p.value(i); i < 0 || i >= len(p.b) {
			return -1
		}
		switch p.b[i] {
		case ',':
			i++
		case end:
			return i + 1
		default:
			return -1
		}
	}
}

func (p *jsonChecker) string(i int) int {
	b := p.b
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c == '\\':
			if i++; i >= len(b) {
				return -1
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) {
					return -1
				}
				i += 4
			default:
				return -1
			}
		case c < 0x20 || c == '<' || c == '>' || c == '&':
			return -1
		case c == 0xe2 && i+2 < len(b) && b[i+1] == 0x80 && b[i+2]&^1 == 0xa8: // U+2028, U+2029
			return -1
		}
	}
	return -1
}

func (p *jsonChecker) literal(i int, lit string) int {
	if !bytes.HasPrefix(p.b[i:], []byte(lit)) {
		return -1
	}
	return i + len(lit)
}

func (p *jsonChecker) number(i int) int {
	b := p.b
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = digits(b, i)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		if i = digits(b, i+1); i < 0 {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		if i++; i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i = digits(b, i); i < 0 {
			return -1
		}
	}
	return i
}

// digits returns the index after the digits at b[i:], or -1 if there are none.
func digits(b []byte, i int) int {
	j := i
	for j < len(b) && '0' <= b[j] && b[j] <= '9' {
		j++
	}
	if j == i {
		return -1
	}
	return j
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
