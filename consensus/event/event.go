// Package event defines Parley's room event and its canonical JSON, content
// hash, redaction and reference-hash event id.
package event

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Errors returned (wrapped, with detail) by Check and VerifySignature.
var (
	ErrEventIDMismatch     = errors.New("event: event id mismatch")
	ErrContentHashMismatch = errors.New("event: content hash mismatch")
	errNilEvent            = errors.New("event: nil event")
)

// Hashes holds the event's content hash.
type Hashes struct {
	SHA256 string `json:"sha256"`
}

// Unsigned holds data not covered by hashes or signatures.
type Unsigned struct {
	TxnID           string `json:"txn_id,omitempty"`
	RedactedBecause *Event `json:"redacted_because,omitempty"`
}

// Event is a room event as stored and sent over the wire.
type Event struct {
	EventID    string                       `json:"event_id"`
	RoomID     string                       `json:"room_id"`
	Sender     string                       `json:"sender"`
	Origin     string                       `json:"origin"`
	OriginTS   int64                        `json:"origin_ts"`
	Type       string                       `json:"type"`
	StateKey   *string                      `json:"state_key,omitempty"`
	Content    json.RawMessage              `json:"content"`
	Redacts    string                       `json:"redacts,omitempty"`
	PrevEvents []string                     `json:"prev_events"`
	Depth      int64                        `json:"depth"`
	Hashes     Hashes                       `json:"hashes"`
	Signatures map[string]map[string]string `json:"signatures,omitempty"`
	StreamPos  int64                        `json:"stream_pos,omitempty"`
	Unsigned   *Unsigned                    `json:"unsigned,omitempty"`
}

// form is the event without event_id, signatures, unsigned and stream_pos.
// Its tags must mirror Event's so that the hashed JSON equals the wire JSON
// minus those keys (TestFormsMatchWire checks this).
type form struct {
	RoomID     string          `json:"room_id"`
	Sender     string          `json:"sender"`
	Origin     string          `json:"origin"`
	OriginTS   int64           `json:"origin_ts"`
	Type       string          `json:"type"`
	StateKey   *string         `json:"state_key,omitempty"`
	Content    json.RawMessage `json:"content"`
	Redacts    string          `json:"redacts,omitempty"`
	PrevEvents []string        `json:"prev_events"`
	Depth      int64           `json:"depth"`
	Hashes     *Hashes         `json:"hashes,omitempty"` // nil for the content hash
}

func newForm(e *Event, content json.RawMessage) form {
	return form{
		RoomID: e.RoomID, Sender: e.Sender, Origin: e.Origin, OriginTS: e.OriginTS,
		Type: e.Type, StateKey: e.StateKey, Content: content, Redacts: e.Redacts,
		PrevEvents: e.PrevEvents, Depth: e.Depth,
	}
}

// keptContent lists, per event type, the content keys that survive redaction.
var keptContent = map[string][]string{
	"m.room.member": {"membership"},
	"m.room.power_levels": {
		"ban", "events", "events_default", "kick", "redact",
		"state_default", "users", "users_default", "invite",
	},
}

// ContentHash returns the unpadded standard base64 SHA-256 of the canonical
// JSON of e without event_id, hashes, signatures, unsigned and stream_pos.
func ContentHash(e *Event) (string, error) {
	if e == nil {
		return "", errNilEvent
	}
	pc := parseContent(e.Content)
	defer pc.release()
	return contentHash(e, &pc)
}

func contentHash(e *Event, pc *parsedContent) (string, error) {
	buf := getBuffer()
	defer buf.release()
	b, err := appendContentHashForm(buf.b[:0], e, pc)
	if err != nil {
		return "", fmt.Errorf("content hash: %w", err)
	}
	buf.b = b
	sum := sha256.Sum256(b)
	return base64.RawStdEncoding.EncodeToString(sum[:]), nil
}

// RedactedForm returns the canonical JSON of the redacted form of e: the
// bytes covered by the reference hash and by signatures. It has no event_id,
// signatures, unsigned or stream_pos, and content must be a JSON object.
func RedactedForm(e *Event) ([]byte, error) {
	if e == nil {
		return nil, errNilEvent
	}
	pc := parseContent(e.Content)
	defer pc.release()
	size := formSize(e, 0)
	if keptContent[e.Type] != nil {
		size += len(pc.canon)
	}
	return redactedForm(make([]byte, 0, size), e, &pc)
}

func redactedForm(dst []byte, e *Event, pc *parsedContent) ([]byte, error) {
	b, err := appendRedactedForm(dst, e, pc)
	if err != nil {
		return nil, fmt.Errorf("redacted form: %w", err)
	}
	return b, nil
}

// ReferenceID returns "$" + unpadded URL-safe base64 of the SHA-256 of
// RedactedForm(e).
func ReferenceID(e *Event) (string, error) {
	if e == nil {
		return "", fmt.Errorf("reference id: %w", errNilEvent)
	}
	pc := parseContent(e.Content)
	defer pc.release()
	return referenceID(e, &pc)
}

func referenceID(e *Event, pc *parsedContent) (string, error) {
	buf := getBuffer()
	defer buf.release()
	b, err := redactedForm(buf.b[:0], e, pc)
	if err != nil {
		return "", fmt.Errorf("reference id: %w", err)
	}
	buf.b = b
	sum := sha256.Sum256(b)
	return "$" + base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// Seal sets e.Hashes.SHA256 to the content hash, then e.EventID to the
// reference id (which covers the hash, hence the order). On error e is left
// unchanged.
func Seal(e *Event) error {
	if e == nil {
		return fmt.Errorf("seal: %w", errNilEvent)
	}
	// Both hashes derive from the same content, parsed once.
	pc := parseContent(e.Content)
	defer pc.release()
	h, err := contentHash(e, &pc)
	if err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	old := e.Hashes
	e.Hashes.SHA256 = h
	id, err := referenceID(e, &pc)
	if err != nil {
		e.Hashes = old
		return fmt.Errorf("seal: %w", err)
	}
	e.EventID = id
	return nil
}

// Redact returns a deep copy of e whose content keeps only the keys that
// survive redaction ("{}" if the content is not a valid JSON object). Since
// the reference hash covers only the redacted form, the event id stays valid.
func Redact(e *Event) *Event {
	r := e.Clone()
	if r == nil {
		return nil
	}
	content, err := strippedContent(e)
	if err != nil {
		content = json.RawMessage("{}")
	}
	r.Content = content
	return r
}

// IsRedactedContent reports whether e's content holds no keys beyond what
// redaction keeps, in which case its content hash cannot be checked.
func IsRedactedContent(e *Event) bool {
	if e == nil {
		return false
	}
	pc := parseContent(e.Content)
	defer pc.release()
	return isRedactedContent(e.Type, &pc)
}

func isRedactedContent(typ string, pc *parsedContent) bool {
	canon, err := pc.standalone()
	if err != nil || canon[0] != '{' {
		return false
	}
	kept := keptContent[typ]
	for w := (memberWalker{obj: canon}); w.next(); {
		if !isKept(kept, w.key) {
			return false
		}
	}
	return true
}

// Check recomputes the event id (always) and the content hash (unless the
// content is redacted) and reports any mismatch.
func Check(e *Event) error {
	if e == nil {
		return errNilEvent
	}
	pc := parseContent(e.Content)
	defer pc.release()
	id, err := referenceID(e, &pc)
	if err != nil {
		return fmt.Errorf("check event %q: %w", e.EventID, err)
	}
	if id != e.EventID {
		return fmt.Errorf("check event: %w: have %q, computed %q", ErrEventIDMismatch, e.EventID, id)
	}
	if isRedactedContent(e.Type, &pc) {
		return nil
	}
	h, err := contentHash(e, &pc)
	if err != nil {
		return fmt.Errorf("check event %q: %w", e.EventID, err)
	}
	if h != e.Hashes.SHA256 {
		return fmt.Errorf("check event %q: %w: have %q, computed %q", e.EventID, ErrContentHashMismatch, e.Hashes.SHA256, h)
	}
	return nil
}

// Clone returns a deep copy of e, preserving nil versus empty slices because
// they marshal differently (null versus []) and so hash differently.
func (e *Event) Clone() *Event {
	if e == nil {
		return nil
	}
	c := *e
	if e.StateKey != nil {
		sk := *e.StateKey
		c.StateKey = &sk
	}
	c.Content = bytes.Clone(e.Content)
	c.PrevEvents = slices.Clone(e.PrevEvents)
	if e.Signatures != nil {
		c.Signatures = make(map[string]map[string]string, len(e.Signatures))
		for origin, sigs := range e.Signatures {
			c.Signatures[origin] = maps.Clone(sigs)
		}
	}
	if e.Unsigned != nil {
		u := *e.Unsigned
		u.RedactedBecause = e.Unsigned.RedactedBecause.Clone()
		c.Unsigned = &u
	}
	return &c
}

// errNotObject refuses content that is valid JSON but has no redacted form.
var errNotObject = errors.New("content: not a JSON object")

// strippedContent returns the canonical content of e's redacted form.
func strippedContent(e *Event) (json.RawMessage, error) {
	pc := parseContent(e.Content)
	defer pc.release()
	b, _, err := appendStrippedContent(nil, e.Type, &pc)
	return b, err
}
