package event

import (
	"fmt"
	"strconv"
	"sync"
)

// The hashed and signed forms of an event are canonical JSON of form. Every
// event is hashed several times on its way through a server, so the forms are
// written directly here rather than with json.Marshal and a second parse by
// Canonical; FuzzFormMatchesReference holds the two to the same bytes.

// appendCanonical appends the canonical JSON of f, byte for byte
// Canonical(json.Marshal(f)).
func (f *form) appendCanonical(dst []byte) ([]byte, error) {
	dst = append(dst, `{"content":`...)
	if f.Content == nil {
		dst = append(dst, "null"...) // json.RawMessage's encoding of nil
	} else {
		var err error
		// The form's own braces are one level of the nesting limit.
		if dst, _, err = appendCanonical(dst, f.Content, maxDepth-1); err != nil {
			return nil, err
		}
	}
	return f.appendTail(dst)
}

// appendTail appends the canonical JSON of f after the content value: the
// keys that sort after "content", with Event's omitempty rules, and the
// closing brace.
func (f *form) appendTail(dst []byte) ([]byte, error) {
	if err := checkSafeInt(f.Depth); err != nil {
		return nil, err
	}
	if err := checkSafeInt(f.OriginTS); err != nil {
		return nil, err
	}
	dst = append(dst, `,"depth":`...)
	dst = strconv.AppendInt(dst, f.Depth, 10)
	if f.Hashes != nil {
		dst = append(dst, `,"hashes":{"sha256":`...)
		dst = appendCanonicalString(dst, f.Hashes.SHA256)
		dst = append(dst, '}')
	}
	dst = append(dst, `,"origin":`...)
	dst = appendCanonicalString(dst, f.Origin)
	dst = append(dst, `,"origin_ts":`...)
	dst = strconv.AppendInt(dst, f.OriginTS, 10)
	dst = append(dst, `,"prev_events":`...)
	if f.PrevEvents == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '[')
		for i, id := range f.PrevEvents {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendCanonicalString(dst, id)
		}
		dst = append(dst, ']')
	}
	if f.Redacts != "" {
		dst = append(dst, `,"redacts":`...)
		dst = appendCanonicalString(dst, f.Redacts)
	}
	dst = append(dst, `,"room_id":`...)
	dst = appendCanonicalString(dst, f.RoomID)
	dst = append(dst, `,"sender":`...)
	dst = appendCanonicalString(dst, f.Sender)
	if f.StateKey != nil {
		dst = append(dst, `,"state_key":`...)
		dst = appendCanonicalString(dst, *f.StateKey)
	}
	dst = append(dst, `,"type":`...)
	dst = appendCanonicalString(dst, f.Type)
	return append(dst, '}'), nil
}

func checkSafeInt(n int64) error {
	if n > maxSafeInt || n < -maxSafeInt {
		return fmt.Errorf("%w: integer %d out of range", ErrNotCanonicalizable, n)
	}
	return nil
}

// formSize estimates the length of e's forms, so their buffer is allocated
// once.
func formSize(e *Event, content int) int {
	n := 192 + content + len(e.RoomID) + len(e.Sender) + len(e.Origin) + len(e.Type) + len(e.Redacts) + len(e.Hashes.SHA256)
	if e.StateKey != nil {
		n += len(*e.StateKey)
	}
	for _, id := range e.PrevEvents {
		n += len(id) + 3
	}
	return n
}

// parsedContent is an event's content canonicalized once, for every form
// derived from it.
type parsedContent struct {
	canon []byte // canonical content; set unless null or err
	depth int    // nesting depth of canon
	null  bool   // the content is nil: null in the content hash, an error elsewhere
	err   error  // why the content on its own is not canonicalizable
	buf   *buffer
}

func parseContent(content []byte) parsedContent {
	if content == nil {
		return parsedContent{null: true}
	}
	buf := getBuffer()
	canon, depth, err := appendCanonical(buf.b[:0], content, maxDepth)
	buf.b = canon
	return parsedContent{canon: canon, depth: depth, err: err, buf: buf}
}

// release returns the buffer of canon, which must no longer be used.
func (pc *parsedContent) release() {
	if pc.buf != nil {
		pc.buf.release()
		pc.buf = nil
	}
	pc.canon = nil
}

// standalone returns pc's canonical content as a document of its own, as the
// redacted form needs it: there nil content is an empty, invalid document.
func (pc *parsedContent) standalone() ([]byte, error) {
	switch {
	case pc.null:
		return nil, errEndOfInput
	case pc.err != nil:
		return nil, pc.err
	}
	return pc.canon, nil
}

// appendContentHashForm appends the canonical JSON that e's content hash
// covers: e without event_id, hashes, signatures, unsigned and stream_pos.
func appendContentHashForm(dst []byte, e *Event, pc *parsedContent) ([]byte, error) {
	dst = append(dst, `{"content":`...)
	switch {
	case pc.null:
		dst = append(dst, "null"...)
	case pc.err != nil:
		return nil, pc.err
	case pc.depth >= maxDepth:
		// Fine on its own, but the form's braces add one level.
		return nil, fmt.Errorf("%w: content exceeds max depth inside the event", ErrNotCanonicalizable)
	default:
		dst = append(dst, pc.canon...)
	}
	f := newForm(e, nil)
	return f.appendTail(dst)
}

// appendRedactedForm appends the canonical JSON of e's redacted form.
func appendRedactedForm(dst []byte, e *Event, pc *parsedContent) ([]byte, error) {
	dst = append(dst, `{"content":`...)
	dst, depth, err := appendStrippedContent(dst, e.Type, pc)
	if err != nil {
		return nil, err
	}
	if depth >= maxDepth {
		return nil, fmt.Errorf("%w: content exceeds max depth inside the event", ErrNotCanonicalizable)
	}
	f := newForm(e, nil)
	h := e.Hashes
	f.Hashes = &h
	return f.appendTail(dst)
}

// appendStrippedContent appends the canonical content of e's redacted form
// for an event of type typ, and returns its nesting depth. The content must
// be a JSON object.
func appendStrippedContent(dst []byte, typ string, pc *parsedContent) ([]byte, int, error) {
	canon, err := pc.standalone()
	if err != nil {
		return nil, 0, fmt.Errorf("content: %w", err)
	}
	if canon[0] != '{' {
		return nil, 0, errNotObject
	}
	kept := keptContent[typ]
	if len(kept) == 0 {
		return append(dst, "{}"...), 1, nil
	}
	// canon's members are sorted, so the kept ones are too.
	start := len(dst)
	dst = append(dst, '{')
	depth := 1
	for w := (memberWalker{obj: canon}); w.next(); {
		if isKept(kept, w.key) {
			if len(dst) > start+1 {
				dst = append(dst, ',')
			}
			dst = append(dst, w.member...)
			depth = max(depth, 1+w.depth)
		}
	}
	return append(dst, '}'), depth, nil
}

// isKept reports whether the canonical key content key is in kept. Kept
// names need no escaping, so comparing encoded bytes is exact.
func isKept(kept []string, key []byte) bool {
	for _, k := range kept {
		if string(key) == k {
			return true
		}
	}
	return false
}

// memberWalker steps through the members of a canonical JSON object (which
// has no whitespace and only the escapes appendEscapedByte writes).
type memberWalker struct {
	obj    []byte
	pos    int
	key    []byte // the key between its quotes, still escaped
	member []byte // `"key":value`
	depth  int    // nesting depth of the value
}

func (w *memberWalker) next() bool {
	if w.pos == 0 {
		w.pos = 1 // past '{'
	}
	if w.obj[w.pos] == '}' {
		return false
	}
	start := w.pos
	keyEnd := skipCanonicalString(w.obj, start)
	w.key = w.obj[start+1 : keyEnd-1]
	end, depth := skipCanonicalValue(w.obj, keyEnd+1) // past ':'
	w.member, w.depth = w.obj[start:end], depth
	w.pos = end
	if w.obj[w.pos] == ',' {
		w.pos++
	}
	return true
}

// skipCanonicalString returns the offset after the canonical string at b[i].
func skipCanonicalString(b []byte, i int) int {
	for i++; b[i] != '"'; i++ {
		if b[i] == '\\' {
			i++
		}
	}
	return i + 1
}

// skipCanonicalValue returns the offset after the canonical JSON value at
// b[i] and its nesting depth.
func skipCanonicalValue(b []byte, i int) (end, depth int) {
	switch b[i] {
	case '"':
		return skipCanonicalString(b, i), 0
	case '{', '[':
	default: // number or literal: up to the next delimiter
		for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' {
			i++
		}
		return i, 0
	}
	open := 0
	for {
		switch b[i] {
		case '{', '[':
			open++
			depth = max(depth, open)
		case '}', ']':
			open--
			if open == 0 {
				return i + 1, depth
			}
		case '"':
			i = skipCanonicalString(b, i) - 1
		}
		i++
	}
}

// buffer is a pooled scratch buffer for forms that are hashed, not returned.
type buffer struct{ b []byte }

var bufferPool = sync.Pool{New: func() any { return &buffer{b: make([]byte, 0, 1024)} }}

func getBuffer() *buffer { return bufferPool.Get().(*buffer) }

func (b *buffer) release() {
	if cap(b.b) > 1<<16 {
		return // let one huge event's buffer go
	}
	b.b = b.b[:0]
	bufferPool.Put(b)
}
