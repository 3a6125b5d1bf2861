// Package content validates and sanitizes the content of room events, the same way whether
// it comes from a WebSocket client, a bridge or a federated org.
package content

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/microcosm-cc/bluemonday"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// Limits of the client protocol.
const (
	MaxBodyBytes    = 32 << 10
	MaxContentBytes = 48 << 10
	MaxNameBytes    = 255
	MaxTopicBytes   = 4096
	MaxKeyBytes     = 64
	MaxReasonBytes  = 1024
	// MaxDepth bounds how deeply a message's content nests (the content object is depth 1).
	// Canonical JSON allows 10,000 levels, encoding/json's limit: content that deep made every
	// frame carrying its event (a push, a history page, a sync answer, a federation
	// transaction) deeper than that, so no Go client could read them any more (Python's json
	// gives up near 1,000), and the room's history was poisoned for them.
	MaxDepth = 32
)

// Error is a refusal with its client protocol code.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func invalid(format string, args ...any) *Error {
	return &Error{Code: "M_INVALID_PARAM", Message: fmt.Sprintf(format, args...)}
}

func tooLarge(format string, args ...any) *Error {
	return &Error{Code: "M_TOO_LARGE", Message: fmt.Sprintf(format, args...)}
}

// policy keeps a safe subset of HTML: no scripts, event handlers, javascript: URLs, styles or
// iframes. A Policy is safe for concurrent use once built.
var policy = func() *bluemonday.Policy {
	p := bluemonday.UGCPolicy()
	p.RequireNoFollowOnLinks(true)
	p.AllowURLSchemes("http", "https", "mailto")
	return p
}()

// SanitizeHTML returns the safe subset of an HTML fragment.
func SanitizeHTML(s string) string { return policy.Sanitize(s) }

// MessageTypes are the msgtype values of m.room.message.
var MessageTypes = map[string]bool{"m.text": true, "m.notice": true, "m.emote": true}

// SendableTypes are the non-state event types a client may send.
var SendableTypes = map[string]bool{"m.room.message": true, "m.reaction": true}

// StateTypes are the state event types a client may set.
var StateTypes = map[string]bool{"m.room.name": true, "m.room.topic": true, "m.room.power_levels": true}

// CheckText refuses strings that are not valid UTF-8 or contain NUL.
func CheckText(field, s string, max int) *Error {
	if !utf8.ValidString(s) {
		return invalid("%s is not valid UTF-8", field)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return invalid("%s contains NUL", field)
	}
	if len(s) > max {
		return tooLarge("%s is over %d bytes", field, max)
	}
	return nil
}

// Message validates the content of a sendable event of type typ and returns it sanitized and
// in canonical JSON.
func Message(typ string, raw json.RawMessage) (json.RawMessage, *Error) {
	if len(raw) > MaxContentBytes {
		return nil, tooLarge("content is over %d bytes", MaxContentBytes)
	}
	canon, err := canonical(raw)
	if err != nil {
		return nil, err
	}
	if typ == "m.room.message" && plainMessage(canon) {
		return canon, nil
	}
	return decodedMessage(typ, canon)
}

// plainMessage reports whether canon is a valid plain message: {"body":…,"msgtype":…} and
// nothing else, with no escape in either string, a known msgtype and a body within its limit.
// Such content is its own canonical form and needs no decoding into a map; anything else, valid
// or not, is left to decodedMessage, which FuzzMessageContent holds this to.
func plainMessage(canon []byte) bool {
	rest, ok := bytes.CutPrefix(canon, []byte(`{"body":"`))
	if !ok {
		return false
	}
	// Canonical has checked the UTF-8 and escaped every NUL, so an unescaped string is
	// valid text.
	end := bytes.IndexAny(rest, `"\`)
	if end < 0 || rest[end] != '"' || end > MaxBodyBytes {
		return false
	}
	rest, ok = bytes.CutPrefix(rest[end+1:], []byte(`,"msgtype":"`))
	if !ok {
		return false
	}
	end = bytes.IndexAny(rest, `"\`)
	return end >= 0 && rest[end] == '"' && string(rest[end+1:]) == "}" && MessageTypes[string(rest[:end])]
}

// nestingDepth is the deepest nesting of objects and arrays in a JSON document (the brackets
// outside its strings).
func nestingDepth(doc []byte) int {
	depth, deepest := 0, 0
	for i := 0; i < len(doc); i++ {
		switch doc[i] {
		case '"':
			for i++; i < len(doc) && doc[i] != '"'; i++ {
				if doc[i] == '\\' {
					i++ // the escaped byte: never a bracket that counts, nor the closing quote
				}
			}
		case '{', '[':
			depth++
			deepest = max(deepest, depth)
		case '}', ']':
			depth--
		}
	}
	return deepest
}

// decodedMessage is Message for any content: decoded into a map, checked, sanitized and
// encoded again unless it is a plain message.
func decodedMessage(typ string, canon []byte) (json.RawMessage, *Error) {
	if nestingDepth(canon) > MaxDepth {
		return nil, invalid("content nests deeper than %d levels", MaxDepth)
	}
	obj, err := decodeObject(canon)
	if err != nil {
		return nil, err
	}
	switch typ {
	case "m.room.message":
		// A plain message (msgtype and body, nothing else) is never rewritten: once checked,
		// its canonical form is the content, with no second encoding.
		_, hasType := obj["msgtype"]
		_, hasBody := obj["body"]
		plain := len(obj) == 2 && hasType && hasBody
		if err := message(obj, true); err != nil {
			return nil, err
		}
		if plain {
			return canon, nil
		}
	case "m.reaction":
		if err := reaction(obj); err != nil {
			return nil, err
		}
		if fb, ok := obj["formatted_body"].(string); ok {
			obj["formatted_body"] = SanitizeHTML(fb)
		} else {
			delete(obj, "formatted_body")
		}
	default:
		return nil, invalid("event type %q cannot be sent", typ)
	}
	return encode(obj)
}

// State validates the content of a state event of type typ.
func State(typ string, raw json.RawMessage) (json.RawMessage, *Error) {
	if len(raw) > MaxContentBytes {
		return nil, tooLarge("content is over %d bytes", MaxContentBytes)
	}
	obj, _, err := object(raw)
	if err != nil {
		return nil, err
	}
	switch typ {
	case "m.room.name":
		s, err := stringField(obj, "name", MaxNameBytes, true)
		if err != nil {
			return nil, err
		}
		obj = map[string]any{"name": s}
	case "m.room.topic":
		s, err := stringField(obj, "topic", MaxTopicBytes, true)
		if err != nil {
			return nil, err
		}
		obj = map[string]any{"topic": s}
	case "m.room.power_levels":
		b, _ := json.Marshal(obj)
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var pl state.PowerLevels
		if err := dec.Decode(&pl); err != nil {
			return nil, invalid("bad power levels: %v", err)
		}
		for u := range pl.Users {
			if CheckText("users key", u, 256) != nil || !strings.HasPrefix(u, "@") {
				return nil, invalid("power levels users must be user ids")
			}
		}
		out, _ := json.Marshal(pl)
		raw, cerr := event.Canonical(out)
		if cerr != nil {
			return nil, invalid("power levels: %v", cerr)
		}
		return raw, nil
	default:
		return nil, invalid("state type %q cannot be set", typ)
	}
	return encode(obj)
}

func object(raw json.RawMessage) (map[string]any, json.RawMessage, *Error) {
	canon, err := canonical(raw)
	if err != nil {
		return nil, nil, err
	}
	obj, err := decodeObject(canon)
	return obj, canon, err
}

// canonical is raw in canonical JSON. It refuses floats, duplicate keys and invalid UTF-8
// before anything looks inside.
func canonical(raw json.RawMessage) (json.RawMessage, *Error) {
	if len(raw) == 0 {
		return nil, invalid("content is required")
	}
	canon, err := event.Canonical(raw)
	if err != nil {
		return nil, invalid("content: %v", err)
	}
	return canon, nil
}

func decodeObject(canon json.RawMessage) (map[string]any, *Error) {
	dec := json.NewDecoder(bytes.NewReader(canon))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return nil, invalid("content must be a JSON object")
	}
	return obj, nil
}

func encode(obj map[string]any) (json.RawMessage, *Error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, invalid("content: %v", err)
	}
	canon, err := event.Canonical(b)
	if err != nil {
		return nil, invalid("content: %v", err)
	}
	return canon, nil
}

func stringField(obj map[string]any, key string, max int, required bool) (string, *Error) {
	v, ok := obj[key]
	if !ok {
		if required {
			return "", invalid("%s is required", key)
		}
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", invalid("%s must be a string", key)
	}
	if err := CheckText(key, s, max); err != nil {
		return "", err
	}
	return s, nil
}

// message checks an m.room.message content in place; relations are allowed at the top level.
func message(obj map[string]any, top bool) *Error {
	msgtype, err := stringField(obj, "msgtype", 64, true)
	if err != nil {
		return err
	}
	if !MessageTypes[msgtype] {
		return invalid("unknown msgtype %q", msgtype)
	}
	if _, err := stringField(obj, "body", MaxBodyBytes, true); err != nil {
		return err
	}
	if fb, ok := obj["formatted_body"]; ok {
		s, isString := fb.(string)
		if !isString {
			return invalid("formatted_body must be a string")
		}
		if err := CheckText("formatted_body", s, MaxBodyBytes); err != nil {
			return err
		}
		if f, ok := obj["format"]; ok && f != "org.matrix.custom.html" {
			return invalid("unknown format: formatted_body is org.matrix.custom.html")
		}
		obj["formatted_body"] = SanitizeHTML(s)
		obj["format"] = "org.matrix.custom.html" // the only format, also when left out
	} else {
		delete(obj, "format") // a format without a formatted body says nothing
	}
	if rel, ok := obj["m.relates_to"]; ok {
		if !top {
			return invalid("nested m.relates_to")
		}
		if err := relation(obj, rel); err != nil {
			return err
		}
	}
	if nc, ok := obj["m.new_content"]; ok {
		if !top {
			return invalid("nested m.new_content")
		}
		inner, isObj := nc.(map[string]any)
		if !isObj {
			return invalid("m.new_content must be an object")
		}
		if err := message(inner, false); err != nil {
			return err
		}
	}
	return nil
}

func relation(obj map[string]any, rel any) *Error {
	r, ok := rel.(map[string]any)
	if !ok {
		return invalid("m.relates_to must be an object")
	}
	if reply, ok := r["m.in_reply_to"]; ok {
		ir, isObj := reply.(map[string]any)
		if !isObj {
			return invalid("m.in_reply_to must be an object")
		}
		if _, err := eventIDField(ir); err != nil {
			return err
		}
	}
	relType, hasType := r["rel_type"]
	if !hasType {
		if _, ok := r["m.in_reply_to"]; !ok {
			return invalid("m.relates_to needs rel_type or m.in_reply_to")
		}
		return nil
	}
	switch relType {
	case "m.replace":
		if _, err := eventIDField(r); err != nil {
			return err
		}
		if _, ok := obj["m.new_content"]; !ok {
			return invalid("an edit needs m.new_content")
		}
	default:
		return invalid("unsupported rel_type for a message")
	}
	return nil
}

func reaction(obj map[string]any) *Error {
	rel, ok := obj["m.relates_to"].(map[string]any)
	if !ok {
		return invalid("a reaction needs m.relates_to")
	}
	if rel["rel_type"] != "m.annotation" {
		return invalid("a reaction's rel_type is m.annotation")
	}
	if _, err := eventIDField(rel); err != nil {
		return err
	}
	if _, err := stringField(rel, "key", MaxKeyBytes, true); err != nil {
		return err
	}
	return nil
}

func eventIDField(obj map[string]any) (string, *Error) {
	id, err := stringField(obj, "event_id", 256, true)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(id, "$") {
		return "", invalid("event_id must start with $")
	}
	return id, nil
}

// AsError converts err to *Error when it is one.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
