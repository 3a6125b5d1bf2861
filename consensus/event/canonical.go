package event

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrNotCanonicalizable is wrapped by every error Canonical returns.
var ErrNotCanonicalizable = errors.New("event: JSON not canonicalizable")

// maxSafeInt bounds integers to what every JSON implementation (notably
// JavaScript's float64 numbers) represents exactly, as Matrix does.
const maxSafeInt = 1<<53 - 1

// maxDepth is encoding/json's nesting limit. Canonical used to be built on
// encoding/json and refused deeper documents; it still does so that no
// document changes between accepted and refused.
const maxDepth = 10000

var errEndOfInput = fmt.Errorf("%w: unexpected end of JSON input", ErrNotCanonicalizable)

// Canonical re-encodes any JSON document as canonical JSON. It refuses invalid
// JSON, invalid UTF-8, duplicate object keys, non-integer numbers, integers
// outside [-(2^53-1), 2^53-1], escapes of lone UTF-16 surrogates and nesting
// deeper than 10000 (ErrNotCanonicalizable wrapped with detail).
func Canonical(raw []byte) ([]byte, error) {
	// The canonical form is never longer than its input: whitespace goes,
	// escapes only get shorter and nothing is added.
	out, _, err := appendCanonical(make([]byte, 0, len(raw)), raw, maxDepth)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CanonicalValue marshals v with encoding/json then canonicalizes it.
func CanonicalValue(v any) ([]byte, error) {
	if f, ok := v.(form); ok {
		// Hashing events is the hot path; the form encoder gives the same bytes.
		return f.appendCanonical(nil)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	return Canonical(raw)
}

// appendCanonical appends the canonical form of the JSON document raw to dst,
// refusing nesting deeper than limit, and returns the nesting depth of raw.
// On error dst is returned with its original length.
func appendCanonical(dst, raw []byte, limit int) ([]byte, int, error) {
	// Checked up front, so strings can be copied byte by byte below. Only
	// ASCII is valid outside strings, so nothing else needs decoding.
	if !utf8.Valid(raw) {
		return dst, 0, fmt.Errorf("%w: invalid UTF-8", ErrNotCanonicalizable)
	}
	p := parserPool.Get().(*canonParser)
	defer p.release()
	start := len(dst)
	p.in, p.out, p.limit = raw, dst, limit
	p.skipSpace()
	if err := p.value(0); err != nil {
		return p.out[:start], 0, err
	}
	p.skipSpace()
	if p.pos < len(p.in) {
		return p.out[:start], 0, p.errChar("after top-level value")
	}
	if len(p.reordered) > 0 {
		p.reorder(start)
	}
	return p.out, p.depth, nil
}

// canonParser is a recursive-descent JSON parser that writes the canonical
// form as it reads. Object members are written in input order. An object
// whose keys did not arrive sorted is put in order in place when it closes if
// no object inside it was; otherwise it is put in order once at the end
// (reorder). So each byte is moved a fixed number of times and nested
// unsorted objects cost linear time, not a copy per enclosing object.
type canonParser struct {
	in    []byte
	pos   int
	out   []byte
	limit int // deepest nesting accepted
	depth int // deepest nesting seen

	members   []canonMember     // members of the objects being parsed, innermost last
	keys      []byte            // unescaped keys of members whose input key had escapes
	sorts     int               // objects whose members were put in key order so far
	reordered []reorderedObject // objects whose members are put in key order at the end
	spans     []span            // members of reordered objects, in key order
	scratch   []byte
}

type span struct{ start, end int }

type canonMember struct {
	key     span // the unescaped key, in in or, if escaped, in keys
	escaped bool
	out     span // `"key":value` in out
}

type reorderedObject struct {
	out     span // the object, braces included, in out
	members span // its members, in spans
}

var parserPool = sync.Pool{New: func() any { return new(canonParser) }}

func (p *canonParser) release() {
	*p = canonParser{
		members:   reuse(p.members, 1<<10),
		keys:      reuse(p.keys, 1<<16),
		reordered: reuse(p.reordered, 1<<10),
		spans:     reuse(p.spans, 1<<10),
		scratch:   reuse(p.scratch, 1<<16),
	}
	parserPool.Put(p)
}

// reuse empties s for the next document, dropping it if one huge document
// grew it, so the pool does not pin that memory.
func reuse[T any](s []T, maxCap int) []T {
	if cap(s) > maxCap {
		return nil
	}
	return s[:0]
}

func (p *canonParser) skipSpace() {
	for p.pos < len(p.in) {
		switch p.in[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// value parses the value at p.pos, which is enclosed by depth containers.
func (p *canonParser) value(depth int) error {
	if p.pos >= len(p.in) {
		return errEndOfInput
	}
	switch c := p.in[p.pos]; {
	case c == '{':
		return p.object(depth + 1)
	case c == '[':
		return p.array(depth + 1)
	case c == '"':
		_, err := p.string()
		return err
	case c == '-' || '0' <= c && c <= '9':
		return p.number()
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	}
	return p.errChar("looking for beginning of value")
}

func (p *canonParser) enter(depth int) error {
	if depth > p.limit {
		return fmt.Errorf("%w: exceeded max depth at offset %d", ErrNotCanonicalizable, p.pos)
	}
	p.depth = max(p.depth, depth)
	return nil
}

func (p *canonParser) array(depth int) error {
	if err := p.enter(depth); err != nil {
		return err
	}
	p.pos++
	p.out = append(p.out, '[')
	p.skipSpace()
	if p.pos < len(p.in) && p.in[p.pos] == ']' {
		p.pos++
		p.out = append(p.out, ']')
		return nil
	}
	for {
		if err := p.value(depth); err != nil {
			return err
		}
		p.skipSpace()
		if p.pos >= len(p.in) {
			return errEndOfInput
		}
		switch p.in[p.pos] {
		case ',':
			p.pos++
			p.out = append(p.out, ',')
			p.skipSpace()
		case ']':
			p.pos++
			p.out = append(p.out, ']')
			return nil
		default:
			return p.errChar("after array element")
		}
	}
}

func (p *canonParser) object(depth int) error {
	if err := p.enter(depth); err != nil {
		return err
	}
	start := len(p.out)
	p.pos++
	p.out = append(p.out, '{')
	p.skipSpace()
	if p.pos < len(p.in) && p.in[p.pos] == '}' {
		p.pos++
		p.out = append(p.out, '}')
		return nil
	}
	base, keysBase, sortsBase := len(p.members), len(p.keys), p.sorts
	sorted := true
	for {
		if p.pos >= len(p.in) {
			return errEndOfInput
		}
		if p.in[p.pos] != '"' {
			return p.errChar("looking for beginning of object key string")
		}
		m, err := p.key()
		if err != nil {
			return err
		}
		p.skipSpace()
		if p.pos >= len(p.in) {
			return errEndOfInput
		}
		if p.in[p.pos] != ':' {
			return p.errChar("after object key")
		}
		p.pos++
		p.out = append(p.out, ':')
		p.skipSpace()
		if err := p.value(depth); err != nil {
			return err
		}
		m.out.end = len(p.out)
		// While keys arrive in strictly increasing order there can be no
		// duplicate and nothing to sort.
		if sorted && len(p.members) > base {
			switch bytes.Compare(p.keyOf(&p.members[len(p.members)-1]), p.keyOf(&m)) {
			case 0:
				return fmt.Errorf("%w: duplicate key %q", ErrNotCanonicalizable, p.keyOf(&m))
			case 1:
				sorted = false
			}
		}
		p.members = append(p.members, m)
		p.skipSpace()
		if p.pos >= len(p.in) {
			return errEndOfInput
		}
		if p.in[p.pos] == '}' {
			p.pos++
			p.out = append(p.out, '}')
			break
		}
		if p.in[p.pos] != ',' {
			return p.errChar("after object key:value pair")
		}
		p.pos++
		p.out = append(p.out, ',')
		p.skipSpace()
	}
	if !sorted {
		if err := p.sortMembers(span{start, len(p.out)}, p.members[base:], p.sorts > sortsBase); err != nil {
			return err
		}
	}
	p.members, p.keys = p.members[:base], p.keys[:keysBase]
	return nil
}

// key parses the object key at p.pos, writing it to out.
func (p *canonParser) key() (canonMember, error) {
	m := canonMember{out: span{start: len(p.out)}}
	inStart := p.pos + 1
	escaped, err := p.string()
	if err != nil {
		return m, err
	}
	if !escaped {
		m.key = span{inStart, p.pos - 1}
		return m, nil
	}
	// Keys compare by their unescaped bytes, which for an escaped key exist
	// only as the canonical output; decode that.
	m.escaped = true
	m.key.start = len(p.keys)
	p.keys = appendUnescapedCanonical(p.keys, p.out[m.out.start+1:len(p.out)-1])
	m.key.end = len(p.keys)
	return m, nil
}

func (p *canonParser) keyOf(m *canonMember) []byte {
	if m.escaped {
		return p.keys[m.key.start:m.key.end]
	}
	return p.in[m.key.start:m.key.end]
}

// sortMembers puts the members ms of object obj, which arrived out of order,
// in key order, refusing duplicate keys (which sorting makes neighbours). If
// an object inside obj was sorted, obj is only recorded for reorder, so that
// no byte is moved twice on the way.
func (p *canonParser) sortMembers(obj span, ms []canonMember, nested bool) error {
	slices.SortFunc(ms, func(a, b canonMember) int { return bytes.Compare(p.keyOf(&a), p.keyOf(&b)) })
	for i := 1; i < len(ms); i++ {
		if k := p.keyOf(&ms[i]); bytes.Equal(p.keyOf(&ms[i-1]), k) {
			return fmt.Errorf("%w: duplicate key %q", ErrNotCanonicalizable, k)
		}
	}
	p.sorts++
	if !nested {
		p.scratch = append(p.scratch[:0], '{')
		for i, m := range ms {
			if i > 0 {
				p.scratch = append(p.scratch, ',')
			}
			p.scratch = append(p.scratch, p.out[m.out.start:m.out.end]...)
		}
		p.scratch = append(p.scratch, '}')
		copy(p.out[obj.start:], p.scratch)
		return nil
	}
	first := len(p.spans)
	for _, m := range ms {
		p.spans = append(p.spans, m.out)
	}
	p.reordered = append(p.reordered, reorderedObject{out: obj, members: span{first, len(p.spans)}})
	return nil
}

// reorder writes the members of every reordered object in key order. Each
// object keeps its length, so out[start:] is rewritten in place.
func (p *canonParser) reorder(start int) {
	// Objects were recorded innermost first; assemble looks them up by offset.
	slices.SortFunc(p.reordered, func(a, b reorderedObject) int { return cmp.Compare(a.out.start, b.out.start) })
	p.scratch = p.assemble(p.scratch[:0], start, len(p.out))
	copy(p.out[start:], p.scratch)
}

// assemble appends out[from:to] to dst with each reordered object in it
// written in key order.
func (p *canonParser) assemble(dst []byte, from, to int) []byte {
	for {
		i, _ := slices.BinarySearchFunc(p.reordered, from, func(o reorderedObject, off int) int { return cmp.Compare(o.out.start, off) })
		if i == len(p.reordered) || p.reordered[i].out.start >= to {
			return append(dst, p.out[from:to]...)
		}
		obj := p.reordered[i]
		dst = append(dst, p.out[from:obj.out.start]...)
		dst = append(dst, '{')
		for j, m := range p.spans[obj.members.start:obj.members.end] {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = p.assemble(dst, m.start, m.end)
		}
		dst = append(dst, '}')
		from = obj.out.end
	}
}

// stringStop marks the bytes that end a run of literal bytes in a JSON
// string: the quote, the backslash and the control characters, which JSON
// forbids unescaped. Canonical JSON escapes exactly these, so runs are copied
// as they are.
var stringStop = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// string parses the string at p.pos, writing it to out in canonical form, and
// reports whether the input used escapes.
func (p *canonParser) string() (escaped bool, err error) {
	in := p.in
	i := p.pos + 1
	run := i
	p.out = append(p.out, '"')
	for {
		for i < len(in) && !stringStop[in[i]] {
			i++
		}
		if i >= len(in) {
			return escaped, errEndOfInput
		}
		switch c := in[i]; c {
		case '"':
			p.out = append(p.out, in[run:i]...)
			p.out = append(p.out, '"')
			p.pos = i + 1
			return escaped, nil
		case '\\':
			escaped = true
			p.out = append(p.out, in[run:i]...)
			n, err := p.escape(i)
			if err != nil {
				return escaped, err
			}
			i += n
			run = i
		default:
			p.pos = i
			return escaped, p.errChar("in string literal")
		}
	}
}

// escape decodes the escape at in[i] (a backslash), writes its canonical
// form and returns the number of input bytes it took.
func (p *canonParser) escape(i int) (int, error) {
	in := p.in
	if i+1 >= len(in) {
		return 0, errEndOfInput
	}
	switch c := in[i+1]; c {
	case '"', '\\', 'b', 'f', 'n', 'r', 't':
		p.out = append(p.out, '\\', c)
		return 2, nil
	case '/':
		p.out = append(p.out, '/')
		return 2, nil
	case 'u':
		r, ok := hex4(in, i+2)
		if !ok {
			return 0, fmt.Errorf("%w: invalid \\u escape at offset %d", ErrNotCanonicalizable, i)
		}
		if !utf16.IsSurrogate(r) {
			p.out = appendCanonicalRune(p.out, r)
			return 6, nil
		}
		// A surrogate cannot be represented in UTF-8 unless it is a high
		// one directly followed by an escaped low one; encoding/json would
		// turn it into U+FFFD and collide with a literal U+FFFD.
		if r < 0xdc00 && i+7 < len(in) && in[i+6] == '\\' && in[i+7] == 'u' {
			if lo, ok := hex4(in, i+8); ok && 0xdc00 <= lo && lo <= 0xdfff {
				p.out = utf8.AppendRune(p.out, utf16.DecodeRune(r, lo))
				return 12, nil
			}
		}
		return 0, fmt.Errorf("%w: lone surrogate \\u%04x at offset %d", ErrNotCanonicalizable, r, i)
	}
	p.pos = i + 1
	return 0, p.errChar("in string escape code")
}

// hex4 decodes the four hex digits at in[i:].
func hex4(in []byte, i int) (rune, bool) {
	if i+4 > len(in) {
		return 0, false
	}
	var r rune
	for _, c := range in[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number parses the number at p.pos. Only integer syntax is accepted: "1.0"
// and "1e3" are refused rather than normalized, so a number has exactly one
// accepted spelling per value (besides -0, which becomes 0).
func (p *canonParser) number() error {
	in := p.in
	start, i := p.pos, p.pos
	if in[i] == '-' {
		i++
	}
	digits := i
	var n uint64
	if i < len(in) && in[i] == '0' {
		i++ // JSON allows no other digit after a leading zero
	} else {
		for ; i < len(in) && '0' <= in[i] && in[i] <= '9'; i++ {
			if i-digits < 16 { // more digits are out of range anyway
				n = n*10 + uint64(in[i]-'0')
			}
		}
	}
	if i == digits {
		if i >= len(in) {
			return errEndOfInput
		}
		p.pos = i
		return p.errChar("in numeric literal")
	}
	if i < len(in) && (in[i] == '.' || in[i] == 'e' || in[i] == 'E') {
		end := i
		for end < len(in) && strings.IndexByte("0123456789.eE+-", in[end]) >= 0 {
			end++
		}
		return fmt.Errorf("%w: non-integer number %s", ErrNotCanonicalizable, in[start:end])
	}
	if i-digits > 16 || n > maxSafeInt {
		return fmt.Errorf("%w: integer %s out of range", ErrNotCanonicalizable, in[start:i])
	}
	if n == 0 {
		p.out = append(p.out, '0')
	} else {
		p.out = append(p.out, in[start:i]...) // already the shortest spelling
	}
	p.pos = i
	return nil
}

func (p *canonParser) literal(word string) error {
	for j := range len(word) {
		if p.pos >= len(p.in) {
			return errEndOfInput
		}
		if p.in[p.pos] != word[j] {
			return p.errChar("in literal " + word)
		}
		p.pos++
	}
	p.out = append(p.out, word...)
	return nil
}

func (p *canonParser) errChar(context string) error {
	return fmt.Errorf("%w: invalid character %s %s at offset %d",
		ErrNotCanonicalizable, strconv.QuoteRune(rune(p.in[p.pos])), context, p.pos)
}

// appendCanonicalRune appends r as canonical JSON string content.
func appendCanonicalRune(dst []byte, r rune) []byte {
	if r < utf8.RuneSelf && stringStop[r] {
		return appendEscapedByte(dst, byte(r))
	}
	return utf8.AppendRune(dst, r)
}

// appendCanonicalString appends s as a canonical JSON string, as
// json.Marshal followed by Canonical would: each invalid UTF-8 byte becomes
// U+FFFD (as encoding/json replaces them), and only '"', '\\' and control
// characters are escaped; everything else (including <, >, &, U+2028 and
// U+2029, which encoding/json escapes) is written as literal UTF-8.
func appendCanonicalString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	run := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if stringStop[c] {
				dst = append(dst, s[run:i]...)
				dst = appendEscapedByte(dst, c)
				run = i + 1
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[run:i]...)
			dst = append(dst, "\uFFFD"...)
			run = i + 1
		}
		i += size
	}
	dst = append(dst, s[run:]...)
	return append(dst, '"')
}

// appendEscapedByte escapes one byte stringStop marks with the shortest
// escape.
func appendEscapedByte(dst []byte, c byte) []byte {
	const hexDigits = "0123456789abcdef"
	switch c {
	case '"', '\\':
		return append(dst, '\\', c)
	case '\b':
		return append(dst, '\\', 'b')
	case '\f':
		return append(dst, '\\', 'f')
	case '\n':
		return append(dst, '\\', 'n')
	case '\r':
		return append(dst, '\\', 'r')
	case '\t':
		return append(dst, '\\', 't')
	}
	return append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
}

// appendUnescapedCanonical appends the bytes that canonical string content
// enc stands for. enc was written by this package, so its escapes are the
// few appendEscapedByte writes.
func appendUnescapedCanonical(dst, enc []byte) []byte {
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		i++
		switch enc[i] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, _ := hex4(enc, i+1)
			dst = append(dst, byte(r))
			i += 4
		default: // '"' or '\\'
			dst = append(dst, enc[i])
		}
	}
	return dst
}
