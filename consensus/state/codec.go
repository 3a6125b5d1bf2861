package state

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/parley-chat/parley/consensus/event"
)

// The Raft log's batch encoding. Entries used to be JSON, and decoding them with encoding/json
// cost ~10% of a follower's CPU under load, where nearly every command is an event. An entry
// is now binary: an event command field by field, any other command as its JSON. A decoded
// batch must be exactly what the JSON round trip gave (the store keeps each event's JSON, and
// hashes and signatures are checked on it), so the binary form is used only where it decodes
// to that. Logs written before stay readable: a JSON batch starts with '{', a binary one with
// batchVersion.
//
//	batch      = batchVersion list(commands) command*
//	command    = tagJSON bytes(json.Marshal(command)) | tagEvent flags event
//	event      = str(event_id) str(room_id) str(sender) str(origin) varint(origin_ts) str(type)
//	             [str(state_key) if flagStateKey] bytes(content) str(redacts)
//	             list(prev_events) str* varint(depth) str(hashes.sha256) signatures str(txn_id)
//	signatures = uvarint(n) (str(origin) list(key ids) (str(key_id) str(signature))*)*
//
// bytes and str are a uvarint length and the bytes; varint is zigzag. list is a uvarint 0 for
// nil, else length+1, because JSON tells null from []. Map keys are in ascending order, so a
// batch has a single encoding.
const (
	batchVersion = 0x01 // can never start JSON

	tagJSON  = 0
	tagEvent = 1

	flagStateKey   = 1 << 0
	flagInviteRoom = 1 << 1
)

// EncodeBatch serializes commands for the Raft log.
func EncodeBatch(cmds []*Command) ([]byte, error) {
	e := encoder{b: make([]byte, 0, 16+400*len(cmds))}
	e.b = append(e.b, batchVersion)
	e.list(cmds == nil, len(cmds))
	for i, c := range cmds {
		mark := len(e.b)
		if e.eventCommand(c) {
			continue
		}
		e.b = e.b[:mark]
		j, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("encode batch: command %d: %w", i, err)
		}
		e.b = append(e.b, tagJSON)
		e.bytes(j)
	}
	// Every node must decode the entry, or it skips it and its state diverges: a batch this
	// decoder would refuse (a bug here, never expected) goes into the log as plain JSON, which
	// it always reads. Decoding costs the proposer ~1.5 µs an event, once.
	if _, err := DecodeBatch(e.b); err != nil {
		j, jerr := json.Marshal(Batch{Commands: cmds})
		if jerr != nil {
			return nil, fmt.Errorf("encode batch: %w", jerr)
		}
		return j, nil
	}
	return e.b, nil
}

type encoder struct {
	b     []byte
	valid bool // every string appended since eventCommand began was valid UTF-8
	// Scratch space: the content as json.Marshal writes it, signature map keys.
	content         []byte
	origins, keyIDs []string
}

// eventCommand appends c in binary form and reports whether that decodes to what c's JSON
// does; if not, the caller drops what was appended and writes JSON.
func (e *encoder) eventCommand(c *Command) bool {
	// Another payload set besides Event: only JSON keeps it.
	if c == nil || c.Event == nil || *c != (Command{Kind: KindEvent, Event: c.Event}) {
		return false
	}
	ev := c.Event.Event
	// JSON decoding keeps content as json.Marshal wrote it (compacted, HTML-escaped); content
	// it cannot write is left to json.Marshal to report. Unsigned and stream_pos are set only
	// on events read back from the store, never in the log, so they need no binary form.
	if ev == nil || ev.Unsigned != nil || ev.StreamPos != 0 {
		return false
	}
	content, err := event.AppendRawMessage(e.content[:0], ev.Content)
	if err != nil {
		return false
	}
	e.content = content
	var flags byte
	if ev.StateKey != nil {
		flags |= flagStateKey
	}
	if c.Event.InviteRoom {
		flags |= flagInviteRoom
	}
	e.b = append(e.b, tagEvent, flags)
	e.valid = true
	e.str(ev.EventID)
	e.str(ev.RoomID)
	e.str(ev.Sender)
	e.str(ev.Origin)
	e.b = binary.AppendVarint(e.b, ev.OriginTS)
	e.str(ev.Type)
	if ev.StateKey != nil {
		e.str(*ev.StateKey)
	}
	e.bytes(content)
	e.str(ev.Redacts)
	e.list(ev.PrevEvents == nil, len(ev.PrevEvents))
	for _, p := range ev.PrevEvents {
		e.str(p)
	}
	e.b = binary.AppendVarint(e.b, ev.Depth)
	e.str(ev.Hashes.SHA256)
	// JSON omits empty signatures (omitempty), so they decode as nil.
	e.b = binary.AppendUvarint(e.b, uint64(len(ev.Signatures)))
	e.origins = sortedKeys(e.origins, ev.Signatures)
	for _, origin := range e.origins {
		e.str(origin)
		keys := ev.Signatures[origin]
		e.list(keys == nil, len(keys))
		e.keyIDs = sortedKeys(e.keyIDs, keys)
		for _, k := range e.keyIDs {
			e.str(k)
			e.str(keys[k])
		}
	}
	e.str(c.Event.TxnID)
	// JSON would replace invalid UTF-8 by U+FFFD (and could merge two map keys doing so).
	return e.valid
}

// sortedKeys returns m's keys in ascending order (the only order the decoder accepts), in
// dst's storage.
func sortedKeys[V any](dst []string, m map[string]V) []string {
	dst = dst[:0]
	for k := range m {
		dst = append(dst, k)
	}
	slices.Sort(dst)
	return dst
}

func (e *encoder) str(s string) {
	e.valid = e.valid && utf8.ValidString(s)
	e.b = binary.AppendUvarint(e.b, uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) bytes(b []byte) {
	e.b = binary.AppendUvarint(e.b, uint64(len(b)))
	e.b = append(e.b, b...)
}

func (e *encoder) list(isNil bool, n int) {
	if isNil {
		e.b = append(e.b, 0)
		return
	}
	e.b = binary.AppendUvarint(e.b, uint64(n)+1)
}

// DecodeBatch parses a Raft log entry of either format. Entries can come from a follower over
// the cluster channel, so the binary decoder trusts no length, and it refuses what would not
// decode to the same batch again after EncodeBatch (invalid UTF-8, content that json.Marshal
// would rewrite, unsorted map keys).
func DecodeBatch(data []byte) (*Batch, error) {
	if len(data) == 0 || data[0] != batchVersion {
		var b Batch
		if err := json.Unmarshal(data, &b); err != nil {
			return nil, fmt.Errorf("decode batch: %w", err)
		}
		return &b, nil
	}
	d := decoder{b: data[1:]}
	b, err := d.batch()
	if err != nil {
		return nil, fmt.Errorf("decode batch: %w", err)
	}
	return b, nil
}

var errTruncated = errors.New("truncated")

// decoder reads a binary batch. Its first error sticks: it empties the input, so every later
// read returns zero values and every count 0, and the caller checks err once per command.
type decoder struct {
	b   []byte // what is left
	err error
	// The previous event and signing key id: events of a batch mostly share their room,
	// sender, origin, type and key, and sharing their strings saves allocations.
	last  *event.Event
	keyID string
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(format, args...)
	}
	d.b = nil
}

func (d *decoder) batch() (*Batch, error) {
	n, isNil := d.list("commands", 2)
	b := &Batch{}
	if !isNil {
		b.Commands = make([]*Command, n)
	}
	for i := range b.Commands {
		b.Commands[i] = d.command()
		if d.err != nil {
			return nil, fmt.Errorf("command %d: %w", i, d.err)
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) > 0 {
		return nil, fmt.Errorf("%d bytes after the last command", len(d.b))
	}
	return b, nil
}

func (d *decoder) command() *Command {
	switch tag := d.byte("tag"); tag {
	case tagEvent:
		return d.eventCommand()
	case tagJSON:
		j := d.raw("json")
		// Event content keeps its spelling through JSON decoding, so only JSON as json.Marshal
		// writes it (compacted, HTML-escaped) re-encodes to the same batch.
		if !d.marshaled("json", j) {
			return nil
		}
		var c *Command
		if err := json.Unmarshal(j, &c); err != nil {
			d.fail("json: %w", err)
		}
		return c
	default:
		d.fail("unknown tag %d", tag)
		return nil
	}
}

func (d *decoder) eventCommand() *Command {
	flags := d.byte("flags")
	if flags&^(flagStateKey|flagInviteRoom) != 0 {
		d.fail("unknown flags %#x", flags)
	}
	// One allocation for the three; the command and its EventCommand are small.
	v := new(struct {
		c  Command
		ec EventCommand
		e  event.Event
	})
	e, last := &v.e, d.last
	if last == nil {
		last = e // all fields still empty
	}
	e.EventID = d.str("event_id")
	e.RoomID = d.strAs("room_id", last.RoomID)
	e.Sender = d.strAs("sender", last.Sender)
	e.Origin = d.strAs("origin", last.Origin)
	e.OriginTS = d.varint("origin_ts")
	e.Type = d.strAs("type", last.Type)
	if flags&flagStateKey != 0 {
		sk := d.str("state_key")
		e.StateKey = &sk
	}
	if content := d.raw("content"); d.marshaled("content", content) {
		e.Content = bytes.Clone(content)
	}
	e.Redacts = d.str("redacts")
	if n, isNil := d.list("prev_events", 1); !isNil {
		e.PrevEvents = make([]string, n)
		for i := range e.PrevEvents {
			e.PrevEvents[i] = d.strAs("prev_events", last.EventID) // a chain in one room
		}
	}
	e.Depth = d.varint("depth")
	e.Hashes.SHA256 = d.str("hashes")
	e.Signatures = d.signatures(e.Origin)
	v.ec = EventCommand{Event: e, TxnID: d.str("txn_id"), InviteRoom: flags&flagInviteRoom != 0}
	v.c = Command{Kind: KindEvent, Event: &v.ec}
	d.last = e
	return &v.c
}

// signatures reads an event's signatures; they are mostly its origin's, by one key.
func (d *decoder) signatures(origin string) map[string]map[string]string {
	n := d.count("signatures", 2)
	if n == 0 {
		return nil
	}
	sigs := make(map[string]map[string]string, n)
	prev := ""
	for i := 0; i < n && d.err == nil; i++ {
		o := d.strAs("signatures", origin)
		if i > 0 && o <= prev {
			d.fail("signatures: origins not in ascending order")
		}
		prev = o
		m, isNil := d.list("signatures", 2)
		var keys map[string]string
		if !isNil {
			keys = make(map[string]string, m)
			prevKey := ""
			for j := 0; j < m && d.err == nil; j++ {
				k := d.strAs("signatures", d.keyID)
				if j > 0 && k <= prevKey {
					d.fail("signatures: key ids not in ascending order")
				}
				prevKey, d.keyID = k, k
				keys[k] = d.str("signatures")
			}
		}
		sigs[o] = keys
	}
	return sigs
}

func (d *decoder) byte(what string) byte {
	if len(d.b) == 0 {
		d.fail("%s: %w", what, errTruncated)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint(what string) uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		if n == 0 {
			d.fail("%s: %w", what, errTruncated)
		} else {
			d.fail("%s: varint overflows 64 bits", what)
		}
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint(what string) int64 {
	u := d.uvarint(what) // zigzag, as binary.AppendVarint writes
	return int64(u>>1) ^ -int64(u&1)
}

// count reads a number of elements that take at least size bytes each: bounding it by what
// is left keeps garbage from making the decoder allocate more than the input justifies.
func (d *decoder) count(what string, size int) int {
	return d.bound(what, d.uvarint(what), size)
}

// list reads the count of a list that may be nil (see the format).
func (d *decoder) list(what string, size int) (n int, isNil bool) {
	v := d.uvarint(what)
	if v == 0 {
		return 0, true
	}
	return d.bound(what, v-1, size), false
}

func (d *decoder) bound(what string, n uint64, size int) int {
	if left := uint64(len(d.b)); n > left || n*uint64(size) > left { // sizes are 1 or 2
		d.fail("%s: %w: length %d with %d bytes left", what, errTruncated, n, len(d.b))
		return 0
	}
	return int(n)
}

// raw returns the next length-prefixed bytes, aliasing the input.
func (d *decoder) raw(what string) []byte {
	n := d.bound(what, d.uvarint(what), 1)
	b := d.b[:n:n]
	d.b = d.b[n:]
	return b
}

func (d *decoder) str(what string) string { return d.utf8(what, d.raw(what)) }

func (d *decoder) utf8(what string, b []byte) string {
	if !utf8.Valid(b) {
		d.fail("%s: invalid UTF-8", what)
		return ""
	}
	return string(b)
}

// strAs reads a string, returning same instead of a copy when the two are equal.
func (d *decoder) strAs(what, same string) string {
	b := d.raw(what)
	if string(b) == same {
		return same
	}
	return d.utf8(what, b)
}

// marshaled reports whether j is JSON exactly as json.Marshal writes a json.RawMessage (so
// event.AppendRawMessage would leave it as it is).
func (d *decoder) marshaled(what string, j []byte) bool {
	if d.err != nil {
		return false
	}
	if !event.IsMarshaled(j) {
		d.fail("%s: not JSON as json.Marshal writes it (valid, compact, HTML-escaped)", what)
		return false
	}
	return true
}
