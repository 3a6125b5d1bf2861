package client

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"unicode/utf8"
	"unsafe"
)

// The load tool reads every pushed event on every subscriber: at a million deliveries a
// second, encoding/json's reflection costs more CPU than the node under test spends sending
// them. scanEventFrame is a validating single-pass scanner for the one frame shape that is
// hot, {"op":"event","event":{…}}, filling only the fields the tool looks at. Anything it is
// not sure about (escapes in keys, case-folded keys, floats, deep nesting) makes it give up,
// and the caller falls back to encoding/json, so the two always agree (FuzzScanEventFrame).
//
// It shares the CPU with the node it measures, so it is written for speed: the position is
// passed in and returned (negative: give up) so that it stays in a register, the key the
// node sends next is matched with a word compare, strings are scanned eight bytes at a
// time, integers are parsed in place, and a string is built only for a field that is kept
// and differs from the previous event's (which the read loop's eventReader recognises by
// a compare alone).

// maxScanDepth bounds nesting: deeper frames are left to encoding/json (which allows 10000).
const maxScanDepth = 64

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
	s := scanner{prev: prev}
	return s.frame(data, ev)
}

// eventReader decodes one connection's event pushes in turn, each reusing the strings of
// the one before; it also remembers which of those are plain, so that a repeated one is
// recognised by a compare, without a scan.
type eventReader struct {
	ev, prev Event
	plain    plainSet // of ev
	// views: ev's event id, body and txn id are views of the frame (scanner.views); set
	// per frame by the connection it came from.
	views bool
}

// scan decodes data into r.ev, as scanEventFrame does.
func (r *eventReader) scan(data []byte) bool {
	r.prev, r.ev = r.ev, Event{}
	s := scanner{prev: &r.prev, prevPlain: r.plain, views: r.views}
	ok := s.frame(data, &r.ev)
	r.plain = s.plain // right for what r.ev holds even when the scan gave up half way
	return ok
}

// plainSet has a bit per string field of Event whose value often repeats from one event to
// the next. A set bit says the value is plain ASCII (no escapes needed), so its JSON form
// is the value in quotes.
type plainSet uint8

const (
	plRoomID plainSet = 1 << iota
	plSender
	plOrigin
	plType
	plMsgType
	plMembership
)

// scanner holds what a scan needs besides the data and the position.
type scanner struct {
	prev      *Event // the previous event of this connection: equal strings are reused, not allocated
	prevPlain plainSet
	plain     plainSet // of the event being decoded
	// views makes the fields that differ in every event (event id, body, txn id) views of
	// the frame's bytes instead of copies, where they need no unescaping: no allocation,
	// but valid only until the frame's buffer is reused (DialOptions.EventViews). The
	// fields strLike reuses are always copies, since the next scan compares against them.
	views bool
}

// eventPrefix is how the node starts an event push: such a frame is read from the event on.
const eventPrefix = `{"op":"event","event":`

func (s *scanner) frame(b []byte, ev *Event) bool {
	var opEvent, sawEvent, eventNull bool
	var f, i int
	var more bool
	if bytes.HasPrefix(b, []byte(eventPrefix)) {
		// What first and op would find: op is "event", and "event" comes next.
		opEvent, f, i, more = true, frEvent, len(eventPrefix), true
	} else {
		f, i, more = frameTable.first(b, 0)
	}
	for ; more; f, i, more = frameTable.next(b, i, f+1) {
		switch f {
		case frOp:
			i = op(b, i, &opEvent)
		case frEvent:
			sawEvent = true
			if j := null(b, i); j >= 0 { // encoding/json sets the pointer to nil; a later object starts afresh
				*ev, s.plain, eventNull, i = Event{}, 0, true, j
				break
			}
			eventNull = false // a repeated object merges into the earlier one, as encoding/json does
			i = s.event(b, i, ev)
		case frID, frCode, frMessage, frUserID, frRoomID, frEventID:
			i = skipStrField(b, i) // not needed, but typed: a number here fails encoding/json too
		case frRetryAfter:
			var n int64
			i = intInto(b, i, &n)
		default:
			i = skip(b, i, 1)
		}
	}
	if i < 0 || !opEvent || !sawEvent || eventNull {
		return false
	}
	return ws(b, i) == len(b)
}

// op reads the op field; *isEvent tells whether it now holds "event".
func op(b []byte, i int, isEvent *bool) int {
	c, i := tok(b, i)
	if c != '"' {
		return null(b, i) // null leaves the field as it was
	}
	start, end, plain := str(b, i)
	if end < 0 {
		return -1
	}
	if !plain {
		v, ok := decodeStr(b[start:end])
		if !ok {
			return -1
		}
		*isEvent = v == "event"
		return end + 1
	}
	*isEvent = string(b[start:end]) == "event"
	return end + 1
}

func (s *scanner) event(b []byte, i int, ev *Event) int {
	prev := s.prev
	f, i, more := eventTable.first(b, i) // not an object: encoding/json rejects it for a struct pointer too
	for ; more; f, i, more = eventTable.next(b, i, f+1) {
		switch f {
		case evEventID:
			i = strInto(b, i, &ev.EventID, s.views)
		case evRoomID:
			i = s.strLike(b, i, &ev.RoomID, prev.RoomID, plRoomID)
		case evSender:
			i = s.strLike(b, i, &ev.Sender, prev.Sender, plSender)
		case evOrigin:
			i = s.strLike(b, i, &ev.Origin, prev.Origin, plOrigin)
		case evType:
			i = s.strLike(b, i, &ev.Type, prev.Type, plType)
		case evOriginTS:
			i = intInto(b, i, &ev.OriginTS)
		case evStreamPos:
			i = intInto(b, i, &ev.StreamPos)
		case evContent:
			i = s.content(b, i, &ev.Content)
		case evUnsigned:
			i = s.unsigned(b, i, &ev.Unsigned.TxnID)
		default: // no field of Event
			i = skip(b, i, 2)
		}
	}
	return i
}

func (s *scanner) content(b []byte, i int, c *Content) int {
	if j := null(b, i); j >= 0 {
		return j
	}
	prev := &s.prev.Content
	f, i, more := contentTable.first(b, i)
	for ; more; f, i, more = contentTable.next(b, i, f+1) {
		switch f {
		case ctBody:
			i = strInto(b, i, &c.Body, s.views)
		case ctMsgType:
			i = s.strLike(b, i, &c.MsgType, prev.MsgType, plMsgType)
		case ctMembership:
			i = s.strLike(b, i, &c.Membership, prev.Membership, plMembership)
		default:
			i = skip(b, i, 3)
		}
	}
	return i
}

func (s *scanner) unsigned(b []byte, i int, txnID *string) int {
	if j := null(b, i); j >= 0 {
		return j
	}
	f, i, more := unsignedTable.first(b, i)
	for ; more; f, i, more = unsignedTable.next(b, i, f+1) {
		if f == 0 {
			i = strInto(b, i, txnID, s.views)
		} else {
			i = skip(b, i, 3)
		}
	}
	return i
}

// Field numbers: indexes into the objects' key tables. unknownKey is a key in none.
const unknownKey = -1

const (
	frOp = iota
	frEvent
	frID
	frCode
	frMessage
	frRetryAfter
	frUserID
	frRoomID
	frEventID
)

const (
	evEventID = iota
	evRoomID
	evSender
	evOrigin
	evOriginTS
	evType
	evContent
	evPrevEvents
	evDepth
	evHashes
	evSignatures
	evStreamPos
	evUnsigned
	evStateKey
	evRedacts
)

const (
	ctBody = iota
	ctMsgType
	ctMembership
)

// The known keys of each object (frameIn, Event, Content, and keys the node sends that no
// field takes), in the order the node sends them (consensus/event.Event; the bench's own
// message content): a message event's first, then the optional ones.
var (
	frameTable = newKeyTable([]string{frOp: "op", frEvent: "event", frID: "id", frCode: "code",
		frMessage: "message", frRetryAfter: "retry_after_ms", frUserID: "user_id", frRoomID: "room_id",
		frEventID: "event_id"})
	eventTable = newKeyTable([]string{evEventID: "event_id", evRoomID: "room_id", evSender: "sender",
		evOrigin: "origin", evOriginTS: "origin_ts", evType: "type", evContent: "content",
		evPrevEvents: "prev_events", evDepth: "depth", evHashes: "hashes", evSignatures: "signatures",
		evStreamPos: "stream_pos", evUnsigned: "unsigned", evStateKey: "state_key", evRedacts: "redacts"})
	contentTable  = newKeyTable([]string{ctBody: "body", ctMsgType: "msgtype", ctMembership: "membership"})
	unsignedTable = newKeyTable([]string{"txn_id"})
)

// A keyTable holds the keys an object is known to have, each also as its quoted form with
// the colon (`"name":`) in two little-endian words, so the key the node is expected to send
// next is recognised by a compare or two, without scanning it.
type keyTable struct {
	names  []string
	quoted [maxKeys]quotedKey // the expected key's index wraps around: no bounds check
}

const maxKeys = 16

type quotedKey struct {
	w0, w1 uint64 // `"name":`, zero-padded to 16 bytes
	m0, m1 uint64 // which of the 16 bytes belong to it
	n      int    // its length
}

func newKeyTable(names []string) *keyTable {
	if len(names) > maxKeys {
		panic("keyTable: too many keys")
	}
	t := &keyTable{names: names}
	for f := range t.quoted {
		t.quoted[f] = quotedKey{w0: 1} // matches no bytes: found by a scan
		if f >= len(names) {
			continue
		}
		if needsEscape(names[f]) {
			panic("keyTable: key " + names[f] + " needs escaping")
		}
		q := `"` + names[f] + `":`
		if len(q) > 16 {
			continue
		}
		var w, m [16]byte
		copy(w[:], q)
		for k := range q {
			m[k] = 0xff
		}
		le := binary.LittleEndian
		t.quoted[f] = quotedKey{w0: le.Uint64(w[:8]), w1: le.Uint64(w[8:]),
			m0: le.Uint64(m[:8]), m1: le.Uint64(m[8:]), n: len(q)}
	}
	return t
}

// first consumes an object's '{' and its first key: f is the key's index in t (unknownKey
// if it has none) and i where its value starts. more is false after an empty object (then
// i is after it) or when the scan gives up (i < 0).
func (t *keyTable) first(b []byte, i int) (f, next int, more bool) {
	c, i := tok(b, i)
	if c != '{' {
		return unknownKey, -1, false
	}
	if c, i = tok(b, i+1); c == '}' {
		return unknownKey, i + 1, false
	}
	f, i = t.field(b, i, 0)
	return f, i, i >= 0
}

// next consumes what follows a member's value: ',' and the next key, as first does, or the
// object's '}' (more is false). expect is the index of the key expected next; the usual
// ',' and `"key":` are matched in one go.
func (t *keyTable) next(b []byte, i, expect int) (f, next int, more bool) {
	if i >= 0 && len(b)-i >= 17 && b[i] == ',' {
		f = expect & (maxKeys - 1)
		k, w := &t.quoted[f], b[i+1:i+17]
		if binary.LittleEndian.Uint64(w)&k.m0 == k.w0 && binary.LittleEndian.Uint64(w[8:])&k.m1 == k.w1 {
			return f, i + 1 + k.n, true
		}
	}
	switch c, i := tok(b, i); c {
	case ',':
		f, i = t.field(b, i+1, expect)
		return f, i, i >= 0
	case '}':
		return unknownKey, i + 1, false
	}
	return unknownKey, -1, false
}

// field reads the key at i and its colon, trying first whether it is the expected one.
// A key that encoding/json would fold to one of t's names makes the scan give up.
func (t *keyTable) field(b []byte, i, expect int) (f, next int) {
	if i >= 0 && len(b)-i >= 16 {
		f = expect & (maxKeys - 1)
		k, w := &t.quoted[f], b[i:i+16]
		if binary.LittleEndian.Uint64(w)&k.m0 == k.w0 && binary.LittleEndian.Uint64(w[8:])&k.m1 == k.w1 {
			return f, i + k.n
		}
	}
	k0, k1, next := key(b, i)
	if next < 0 {
		return unknownKey, -1
	}
	name := b[k0:k1]
	for f, n := range t.names {
		if string(name) == n {
			return f, next
		}
	}
	if foldsTo(name, t.names) {
		return unknownKey, -1
	}
	return unknownKey, next
}

// foldsTo reports whether key matches one of names only case-insensitively: encoding/json
// would fill the field, so such keys are left to it. The names are lower case and key()
// already refused non-ASCII keys (which covers the Unicode folds), so only a key with an
// upper-case letter can fold to one. (Some names are no field's: refusing those is merely
// cautious.)
func foldsTo(key []byte, names []string) bool {
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

// needsEscape: a string whose raw JSON form would differ from its value.
func needsEscape(v string) bool {
	for k := 0; k < len(v); k++ {
		if c := v[k]; c == '"' || c == '\\' || c < 0x20 || c >= 0x80 {
			return true
		}
	}
	return false
}

// tok returns the first byte at or after i that is not whitespace, and its index; the byte
// is 0 at the end, or when i < 0 (a scan that gave up). The node sends no whitespace, so
// the check for it is small enough to inline and the loop is out of line.
func tok(b []byte, i int) (byte, int) {
	if uint(i) < uint(len(b)) {
		if c := b[i]; c > ' ' {
			return c, i
		}
	}
	i = wsLoop(b, i)
	return at(b, i), i
}

// ws skips whitespace.
func ws(b []byte, i int) int {
	_, i = tok(b, i)
	return i
}

func wsLoop(b []byte, i int) int {
	for ; uint(i) < uint(len(b)); i++ {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
		default:
			return i
		}
	}
	return i
}

// at returns b[i], or 0 when i is out of range.
func at(b []byte, i int) byte {
	if uint(i) < uint(len(b)) {
		return b[i]
	}
	return 0
}

// null consumes a null at i (after whitespace); -1 if there is none.
func null(b []byte, i int) int {
	if c, i := tok(b, i); c == 'n' {
		return lit(b, i, "null")
	}
	return -1
}

// lit consumes word at i.
func lit(b []byte, i int, word string) int {
	if len(b)-i >= len(word) && string(b[i:i+len(word)]) == word {
		return i + len(word)
	}
	return -1
}

// key reads a member's key and its colon: the key is b[k0:k1], the value starts at next. A
// key with escapes or non-ASCII bytes makes the scan give up: encoding/json would unescape
// it or fold it to a field name.
func key(b []byte, i int) (k0, k1, next int) {
	c, i := tok(b, i)
	if c != '"' {
		return 0, 0, -1
	}
	j := firstSpecial(b, i+1)
	if at(b, j) != '"' {
		return 0, 0, -1
	}
	if c, n := tok(b, j+1); c == ':' {
		return i + 1, j, n + 1
	}
	return 0, 0, -1
}

// SWAR constants: a byte repeated across a word.
const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// firstSpecial returns the index of the first byte at or after j that a string scan must
// look at: the end quote, a backslash, a control character (invalid in JSON strings) or a
// non-ASCII byte (UTF-8 to validate); len(b) if there is none. It tests eight bytes at a
// time: the strings of an event frame are short and mostly plain, so a word loop beats a
// byte loop, and bytes.IndexByte's call and setup too.
func firstSpecial(b []byte, j int) int {
	if j < 0 {
		return j
	}
	for ; j <= len(b)-16; j += 16 {
		// Two words per loop branch: the two are independent, so they overlap.
		m0 := specials(binary.LittleEndian.Uint64(b[j : j+8]))
		m1 := specials(binary.LittleEndian.Uint64(b[j+8 : j+16]))
		if m0|m1 != 0 {
			if m0 != 0 {
				return j + bits.TrailingZeros64(m0)>>3
			}
			return j + 8 + bits.TrailingZeros64(m1)>>3
		}
	}
	if j <= len(b)-8 {
		if m := specials(binary.LittleEndian.Uint64(b[j : j+8])); m != 0 {
			return j + bits.TrailingZeros64(m)>>3
		}
		j += 8
	}
	for ; j < len(b); j++ {
		if c := b[j]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			return j
		}
	}
	return j
}

// specials sets the high bit of the bytes of x that are < 0x20, '"', '\\' or >= 0x80.
// Borrows can also mark bytes above a marked one, so only the lowest mark is exact. x^0x02
// maps '"' to 0x20 and the control characters among themselves, so one subtraction finds
// both.
func specials(x uint64) uint64 {
	return (((x ^ ones*0x02) - ones*0x21) | ((x ^ ones*'\\') - ones) | x) & highs
}

// str scans the string whose opening quote is at i: b[start:end] is its raw body and end
// its closing quote (-1: give up). plain means the body is the value as is: ASCII without
// escapes. Escapes and control characters are validated, UTF-8 is not (encoding/json does
// not refuse invalid UTF-8, it replaces it).
func str(b []byte, i int) (start, end int, plain bool) {
	start = i + 1
	j := firstSpecial(b, start)
	if at(b, j) == '"' {
		return start, j, true
	}
	return start, strSlow(b, j), false
}

// strSlow finishes a string from j, its first escape or non-ASCII byte, and returns the
// index of its closing quote.
func strSlow(b []byte, j int) int {
	for j < len(b) {
		switch c := b[j]; {
		case c == '"':
			return j
		case c == '\\':
			switch at(b, j+1) {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j += 2
			case 'u':
				if j+6 > len(b) || !isHex4(b[j+2:j+6]) {
					return -1
				}
				j += 6
			default:
				return -1
			}
		case c < 0x20:
			return -1
		default: // non-ASCII
			j++
		}
		j = firstSpecial(b, j)
	}
	return -1
}

func isHex4(h []byte) bool {
	for _, c := range h[:4] {
		if hexVal(c) < 0 {
			return false
		}
	}
	return true
}

func hexVal(c byte) rune {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0')
	case c >= 'a' && c <= 'f':
		return rune(c - 'a' + 10)
	case c >= 'A' && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

// strInto reads a string (or null, which leaves *dst as it was) into *dst. With view, a value
// needing no unescaping is a view of b rather than a copy (scanner.views); an escaped one
// always gets a string of its own.
func strInto(b []byte, i int, dst *string, view bool) int {
	c, i := tok(b, i)
	if c != '"' {
		return null(b, i) // anything else is not a string: encoding/json refuses it too
	}
	j := firstSpecial(b, i+1)
	if at(b, j) != '"' {
		return strDecode(b, i, j, dst)
	}
	if view {
		*dst = unsafe.String(&b[i+1], j-(i+1)) // b[i+1] exists: it is at least the closing quote
	} else {
		*dst = string(b[i+1 : j])
	}
	return j + 1
}

// strLike is strInto for a field that reuses like, the previous event's value, when the
// value is the same. bit is the field's in plainSet: it must be set in s.plain only while
// the field holds a plain value.
func (s *scanner) strLike(b []byte, i int, dst *string, like string, bit plainSet) int {
	c, i := tok(b, i)
	if c != '"' {
		return null(b, i)
	}
	// A plain like is its own JSON form: the same bytes, then a quote, are the same value.
	if s.prevPlain&bit != 0 {
		if e := i + 1 + len(like); e < len(b) && b[e] == '"' && string(b[i+1:e]) == like {
			*dst = like
			s.plain |= bit
			return e + 1
		}
	}
	j := firstSpecial(b, i+1)
	if at(b, j) != '"' {
		s.plain &^= bit
		return strDecode(b, i, j, dst)
	}
	if raw := b[i+1 : j]; string(raw) == like {
		*dst = like
	} else {
		*dst = string(raw)
	}
	s.plain |= bit
	return j + 1
}

// strDecode finishes strInto or strLike for a string that is not plain, from j, its first
// escape or non-ASCII byte.
func strDecode(b []byte, i, j int, dst *string) int {
	end := strSlow(b, j)
	if end < 0 {
		return -1
	}
	v, ok := decodeStr(b[i+1 : end])
	if !ok {
		return -1
	}
	*dst = v
	return end + 1
}

// skipStrField validates the value of a string field that is not kept: a string or null.
func skipStrField(b []byte, i int) int {
	c, i := tok(b, i)
	if c != '"' {
		return null(b, i)
	}
	if _, end, _ := str(b, i); end >= 0 {
		return end + 1
	}
	return -1
}

// decodeStr builds the value of a string that is not plain. Invalid UTF-8 makes it give up
// (encoding/json would substitute U+FFFD), as do surrogate escapes.
func decodeStr(raw []byte) (string, bool) {
	if !utf8.Valid(raw) {
		return "", false
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw), true
	}
	return unescape(raw)
}

// unescape decodes a string body whose escapes str already validated; surrogate escapes
// make it give up.
func unescape(raw []byte) (string, bool) {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(raw) {
			return "", false
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
				return "", false
			}
			var r rune
			for _, h := range raw[i+1 : i+5] {
				d := hexVal(h)
				if d < 0 {
					return "", false
				}
				r = r<<4 | d
			}
			if r >= 0xD800 && r <= 0xDFFF {
				return "", false
			}
			out = utf8.AppendRune(out, r)
			i += 4
		default:
			return "", false
		}
	}
	return string(out), true
}

// intInto reads an integer (or null) the way encoding/json fills an int64: it parses the
// literal with strconv.ParseInt, so a fraction, an exponent or a value out of range is an
// error there (and makes the scan give up here), while -0 is 0.
func intInto(b []byte, i int, dst *int64) int {
	c, i := tok(b, i)
	if c == 'n' {
		return lit(b, i, "null")
	}
	neg := c == '-'
	if neg {
		i++
	}
	var n uint64
	switch d := at(b, i); {
	case d == '0': // a digit after it is not JSON: next finds it where ',' or '}' belongs
		i++
	case d >= '1' && d <= '9':
		start := i
		for ; i < len(b) && b[i]-'0' <= 9; i++ {
			n = n*10 + uint64(b[i]-'0')
		}
		if i-start > 19 {
			return -1 // out of range, and n has wrapped around; 19 digits fit in a uint64
		}
	default:
		return -1
	}
	if c := at(b, i); c == '.' || c == 'e' || c == 'E' {
		return -1
	}
	if n > 1<<63-1 && !(neg && n == 1<<63) {
		return -1
	}
	v := int64(n) // 1<<63 becomes math.MinInt64, which negation leaves as it is
	if neg {
		v = -v
	}
	*dst = v
	return i
}

// number consumes a JSON number at i, validating its grammar.
func number(b []byte, i int) int {
	if at(b, i) == '-' {
		i++
	}
	switch c := at(b, i); {
	case c == '0':
		i++
	case c >= '1' && c <= '9':
		for i++; i < len(b) && b[i]-'0' <= 9; i++ {
		}
	default:
		return -1
	}
	if at(b, i) == '.' {
		d := i + 1
		for i = d; i < len(b) && b[i]-'0' <= 9; i++ {
		}
		if i == d {
			return -1
		}
	}
	if c := at(b, i); c == 'e' || c == 'E' {
		if c := at(b, i+1); c == '+' || c == '-' {
			i++
		}
		d := i + 1
		for i = d; i < len(b) && b[i]-'0' <= 9; i++ {
		}
		if i == d {
			return -1
		}
	}
	return i
}

// skip consumes any JSON value inside a container at nesting depth, validating it. It walks
// nested values in a loop (a bit per level records whether it is an array) rather than
// recursing, and reads keys there too, which are strings like any other here.
func skip(b []byte, i, depth int) int {
	var arrays uint64 // bit n-1: nesting level n inside the skipped value is an array
	n := 0
	key := false // an object's key is expected at i, rather than a value
	for {
		c, j := tok(b, i)
		switch {
		case c == '"':
			e := firstSpecial(b, j+1)
			if at(b, e) != '"' {
				if e = strSlow(b, e); e < 0 {
					return -1
				}
			}
			if i = e + 1; key {
				if c, i = tok(b, i); c != ':' {
					return -1
				}
				i, key = i+1, false
				continue
			}
		case key:
			return -1
		case c == '{' || c == '[':
			if depth+n+1 > maxScanDepth {
				return -1
			}
			n++
			bit := uint64(1) << ((n - 1) & 63)
			var d byte
			d, i = tok(b, j+1)
			if c == '[' {
				arrays |= bit
				if d != ']' {
					continue
				}
			} else {
				arrays &^= bit
				if d != '}' {
					key = true
					continue
				}
			}
			i++ // an empty one
			n--
		case c == '-' || (c >= '0' && c <= '9'):
			if i = number(b, j); i < 0 {
				return -1
			}
		case c == 't':
			if i = lit(b, j, "true"); i < 0 {
				return -1
			}
		case c == 'f':
			if i = lit(b, j, "false"); i < 0 {
				return -1
			}
		case c == 'n':
			if i = lit(b, j, "null"); i < 0 {
				return -1
			}
		default:
			return -1
		}
		// A value ended: close what it ends, or go on to the next element or member.
		for n > 0 {
			array := arrays>>((n-1)&63)&1 != 0
			c, i = tok(b, i)
			if c == ',' {
				i, key = i+1, !array
				break
			}
			if (array && c == ']') || (!array && c == '}') {
				i++
				n--
				continue
			}
			return -1
		}
		if n == 0 {
			return i
		}
	}
}
