package bridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/parley-chat/parley/node"
	"github.com/parley-chat/parley/node/content"
)

// Wire constants of amqp.md.
const (
	// CommandType is the "type" of every command.
	CommandType = "parley.bridge.v1"
	// MaxCommandBytes bounds a command's AMQP body; a larger one is refused with M_TOO_LARGE.
	MaxCommandBytes = 64 << 10
	// MaxTxnIDBytes bounds txn_id, as for a client's send.
	MaxTxnIDBytes = 255
)

// The operations of a command.
const (
	OpSend   = "send"
	OpJoin   = "join"
	OpLeave  = "leave"
	OpTyping = "typing"
)

// Error codes a refusal carries (the client protocol's).
const (
	CodeBadJSON   = "M_BAD_JSON"
	CodeTooLarge  = "M_TOO_LARGE"
	CodeForbidden = "M_FORBIDDEN"
	CodeInvalid   = "M_INVALID_PARAM"
	CodeNotFound  = "M_NOT_FOUND"
	// CodeUnavailable: the home org of a room of another org did not answer (remote.go).
	CodeUnavailable = "M_UNAVAILABLE"
	// CodeUnknown: the home org refused with a code that is not the protocol's (remote.go).
	CodeUnknown = "M_UNKNOWN"
)

// Command is one command from a bridge:
//
//	{"type":"parley.bridge.v1","bridge":ID,"txn_id":STRING,"op":"send"|"join"|"leave"|"typing",
//	 "room": room id or alias, "sender": "@localpart:ORG", "event_type"?: TYPE, "content"?: {…}}
type Command struct {
	Type      string          `json:"type"`
	Bridge    string          `json:"bridge"`
	TxnID     string          `json:"txn_id"`
	Op        string          `json:"op"`
	Room      string          `json:"room"`
	Sender    string          `json:"sender"`
	EventType string          `json:"event_type,omitempty"`
	Content   json.RawMessage `json:"content,omitempty"`
}

// Error is a refusal of a command; it is dead-lettered with x-parley-error = Error().
type Error struct {
	Code   string
	Reason string
}

func (e *Error) Error() string { return e.Code + ": " + e.Reason }

func refuse(code, format string, args ...any) *Error {
	return &Error{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// ParseCommand decodes a command strictly: one JSON object of valid UTF-8 with the known
// fields only, each at most once and of its type, the required ones present, nothing after
// it. Schema violations are M_BAD_JSON, bad values M_INVALID_PARAM, a body over
// MaxCommandBytes M_TOO_LARGE. The content is checked later, by Validate.
func ParseCommand(body []byte) (*Command, *Error) {
	if len(body) > MaxCommandBytes {
		return nil, refuse(CodeTooLarge, "command of %d bytes (at most %d)", len(body), MaxCommandBytes)
	}
	if !node.LosslessJSON(body) {
		// Read as U+FFFD by the decoder, two txn_ids differing only there would be one.
		return nil, refuse(CodeBadJSON, "the command is not valid UTF-8, or escapes a lone surrogate (\\ud800 alone)")
	}
	c, err := decodeStrict(body)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct{ name, v string }{{"type", c.Type}, {"bridge", c.Bridge}, {"txn_id", c.TxnID},
		{"op", c.Op}, {"room", c.Room}, {"sender", c.Sender}} {
		if f.v == "" {
			return nil, refuse(CodeBadJSON, "missing %s", f.name)
		}
	}
	if c.Type != CommandType {
		return nil, refuse(CodeBadJSON, "type must be %s", CommandType)
	}
	switch c.Op {
	case OpSend, OpJoin, OpLeave, OpTyping:
	default:
		return nil, refuse(CodeBadJSON, "unknown op %q", c.Op)
	}
	if len(c.TxnID) > MaxTxnIDBytes || strings.IndexByte(c.TxnID, 0) >= 0 {
		return nil, refuse(CodeInvalid, "txn_id is 1-%d bytes of UTF-8 without NUL", MaxTxnIDBytes)
	}
	if c.EventType != "" && c.Op != OpSend {
		return nil, refuse(CodeInvalid, "event_type is only for send")
	}
	if c.Content != nil && (c.Op == OpJoin || c.Op == OpLeave) {
		return nil, refuse(CodeInvalid, "%s takes no content", c.Op)
	}
	return c, nil
}

// decodeStrict walks the top-level object so that unknown and repeated fields are refused.
func decodeStrict(body []byte) (*Command, *Error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, refuse(CodeBadJSON, "a command is a JSON object")
	}
	var c Command
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, refuse(CodeBadJSON, "invalid JSON")
		}
		key, _ := tok.(string)
		if seen[key] {
			return nil, refuse(CodeBadJSON, "duplicate field %q", key)
		}
		seen[key] = true
		var dst any
		switch key {
		case "type":
			dst = &c.Type
		case "bridge":
			dst = &c.Bridge
		case "txn_id":
			dst = &c.TxnID
		case "op":
			dst = &c.Op
		case "room":
			dst = &c.Room
		case "sender":
			dst = &c.Sender
		case "event_type":
			dst = &c.EventType
		case "content":
			dst = &c.Content
		default:
			return nil, refuse(CodeBadJSON, "unknown field %q", key)
		}
		if err := dec.Decode(dst); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				return nil, refuse(CodeBadJSON, "%s must be a string", key)
			}
			return nil, refuse(CodeBadJSON, "invalid JSON")
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, refuse(CodeBadJSON, "invalid JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, refuse(CodeBadJSON, "data after the command object")
	}
	if c.Content != nil {
		switch v := bytes.TrimSpace(c.Content); {
		case string(v) == "null":
			c.Content = nil
		case len(v) == 0 || v[0] != '{':
			return nil, refuse(CodeBadJSON, "content must be an object")
		}
	}
	return &c, nil
}

// Typing is the content of a typing command: {"typing": bool (default true),
// "timeout_ms": 1-120000 (default 30000)}.
type Typing struct {
	Typing  bool
	Timeout time.Duration
}

// Validated is a command's content made ready: validated and sanitized exactly like a
// client's.
type Validated struct {
	EventType string          // send: the event type (default m.room.message)
	Content   json.RawMessage // send: the sanitized content, canonical JSON
	Typing    Typing          // typing
}

// Validate checks and sanitizes the content of c as the node does a client's: for send the
// event type must be sendable and content.Message decides (HTML is sanitized, not refused);
// for typing the content is a Typing.
func Validate(c *Command) (*Validated, *Error) {
	v := &Validated{}
	switch c.Op {
	case OpSend:
		v.EventType = c.EventType
		if v.EventType == "" {
			v.EventType = "m.room.message"
		}
		if !content.SendableTypes[v.EventType] {
			return nil, refuse(CodeInvalid, "event type %q cannot be sent", v.EventType)
		}
		body, cerr := content.Message(v.EventType, c.Content)
		if cerr != nil {
			return nil, &Error{Code: cerr.Code, Reason: cerr.Message}
		}
		v.Content = body
	case OpTyping:
		t, err := parseTyping(c.Content)
		if err != nil {
			return nil, err
		}
		v.Typing = t
	}
	return v, nil
}

func parseTyping(raw json.RawMessage) (Typing, *Error) {
	t := Typing{Typing: true, Timeout: 30 * time.Second}
	if raw == nil {
		return t, nil
	}
	var c struct {
		Typing    *bool  `json:"typing"`
		TimeoutMS *int64 `json:"timeout_ms"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return t, refuse(CodeInvalid, "typing content is {\"typing\": bool, \"timeout_ms\"?: a whole number of ms, at least 1}")
	}
	if c.Typing != nil {
		t.Typing = *c.Typing
	}
	if c.TimeoutMS != nil {
		if *c.TimeoutMS < 1 {
			return t, refuse(CodeInvalid, "timeout_ms is at least 1")
		}
		// Capped, not refused, as a client's typing is (docs/protocol.md): the contract sets
		// no maximum.
		t.Timeout = time.Duration(min(*c.TimeoutMS, maxTypingTimeoutMS)) * time.Millisecond
	}
	return t, nil
}

// maxTypingTimeoutMS caps a typing command's timeout_ms, as node's caps a client's.
const maxTypingTimeoutMS = 120000

// RoutingKey is the routing key of an event on parley.ORG.events: ROOM.TYPE, each part with
// '.' replaced by '_' ("!x7Kq:acme_test.m_room_message").
func RoutingKey(roomID, eventType string) string {
	return strings.ReplaceAll(roomID, ".", "_") + "." + strings.ReplaceAll(eventType, ".", "_")
}
