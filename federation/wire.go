package federation

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/parley-chat/parley/consensus/event"
)

// Wire types and limits of amqp.md.
const (
	TypeTxn      = "parley.txn.v1"
	TypeRequest  = "parley.req.v1"
	TypeResponse = "parley.resp.v1"

	MaxMessageBytes = 1 << 20 // a larger message is refused whole
	MaxPDUs         = 100
	MaxEDUs         = 100
)

// EDU is an ephemeral data unit: typing, receipts, presence.
type EDU struct {
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
}

// Transaction carries events (PDUs) and EDUs from one org to another.
type Transaction struct {
	Type        string                       `json:"type"`
	TxnID       string                       `json:"txn_id"`
	Origin      string                       `json:"origin"`
	Destination string                       `json:"destination"`
	OriginTS    int64                        `json:"origin_ts"`
	PDUs        []*event.Event               `json:"pdus"`
	EDUs        []EDU                        `json:"edus"`
	Signatures  map[string]map[string]string `json:"signatures,omitempty"`
}

// Request asks another org for something (join, backfill) and expects a Response.
type Request struct {
	Type        string                       `json:"type"`
	ReqID       string                       `json:"req_id"`
	Origin      string                       `json:"origin"`
	Destination string                       `json:"destination"`
	OriginTS    int64                        `json:"origin_ts"`
	Op          string                       `json:"op"`
	Params      json.RawMessage              `json:"params"`
	Signatures  map[string]map[string]string `json:"signatures,omitempty"`
}

// Response answers a Request.
type Response struct {
	Type        string                       `json:"type"`
	ReqID       string                       `json:"req_id"`
	Origin      string                       `json:"origin"`
	Destination string                       `json:"destination"`
	Code        string                       `json:"code,omitempty"` // M_* on refusal
	Message     string                       `json:"message,omitempty"`
	Result      json.RawMessage              `json:"result,omitempty"`
	Signatures  map[string]map[string]string `json:"signatures,omitempty"`
}

// signable is implemented by the three signed messages.
type signable interface {
	sigs() *map[string]map[string]string
}

func (t *Transaction) sigs() *map[string]map[string]string { return &t.Signatures }
func (r *Request) sigs() *map[string]map[string]string     { return &r.Signatures }
func (r *Response) sigs() *map[string]map[string]string    { return &r.Signatures }

// signingBytes is the canonical JSON of m without its signatures.
func signingBytes(m signable) ([]byte, error) {
	p := m.sigs()
	saved := *p
	*p = nil
	raw, err := json.Marshal(m)
	*p = saved
	if err != nil {
		return nil, err
	}
	return event.Canonical(raw)
}

// signMessage signs m as origin.
func signMessage(m signable, origin string, key *SigningKey) error {
	b, err := signingBytes(m)
	if err != nil {
		return fmt.Errorf("federation: sign: %w", err)
	}
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(key.Private, b))
	*m.sigs() = map[string]map[string]string{origin: {signatureKey(key.KeyID): sig}}
	return nil
}

// ErrBadSignature means a message or event is not signed by the key its origin configured.
var ErrBadSignature = errors.New("bad signature")

// verifyMessage checks m's signature by origin with one of the peer's keys: the one its
// signature names.
func verifyMessage(m signable, origin string, peer PeerKey) error {
	sigs := (*m.sigs())[origin]
	var pub ed25519.PublicKey
	var sig string
	for _, k := range peer.keys() {
		if s, ok := sigs[signatureKey(k.KeyID)]; ok {
			pub, sig = k.Public, s
			break
		}
	}
	if pub == nil {
		return fmt.Errorf("%w: no signature by %s with a key configured for it", ErrBadSignature, origin)
	}
	raw, err := base64.RawStdEncoding.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("%w: signature is not unpadded base64", ErrBadSignature)
	}
	b, err := signingBytes(m)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if !ed25519.Verify(pub, b, raw) {
		return ErrBadSignature
	}
	return nil
}

// PeerKey is a federated org's public key, and the keys it signed with before a rotation.
type PeerKey struct {
	KeyID  string
	Public ed25519.PublicKey
	// Previous are the org's earlier keys, still accepted: messages signed before a rotation
	// may still be queued, and older events keep their signatures for good.
	Previous []PublicKey
}

// PublicKey is one ed25519 public key with its key id.
type PublicKey struct {
	KeyID  string
	Public ed25519.PublicKey
}

// keys lists the org's keys, the current one first.
func (p PeerKey) keys() []PublicKey {
	return append([]PublicKey{{KeyID: p.KeyID, Public: p.Public}}, p.Previous...)
}

// verifyEvent checks e's signature by origin with the key of origin's that signed it. Parley
// before 2026-12-05 named the key in events' signatures by the bare KEYID, without "ed25519:";
// such events are still stored at other orgs and relayed again, so that spelling is accepted.
func verifyEvent(e *event.Event, origin string, peer PeerKey) error {
	for _, k := range peer.keys() {
		for _, name := range []string{signatureKey(k.KeyID), k.KeyID} {
			if _, ok := e.Signatures[origin][name]; ok {
				return event.VerifySignature(e, origin, name, k.Public)
			}
		}
	}
	// None of the org's keys signed it: report it against the current key.
	return event.VerifySignature(e, origin, signatureKey(peer.KeyID), peer.Public)
}

// decodeStrict decodes one JSON object into v, refusing unknown fields and trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// DecodeTransaction parses and bounds a transaction body (untrusted input).
func DecodeTransaction(body []byte) (*Transaction, error) {
	if len(body) > MaxMessageBytes {
		return nil, fmt.Errorf("transaction of %d bytes is over %d", len(body), MaxMessageBytes)
	}
	var t Transaction
	if err := decodeStrict(body, &t); err != nil {
		return nil, fmt.Errorf("bad transaction JSON: %w", err)
	}
	switch {
	case t.Type != TypeTxn:
		return nil, fmt.Errorf("type is %q, not %s", t.Type, TypeTxn)
	case t.TxnID == "" || len(t.TxnID) > 255:
		return nil, errors.New("txn_id is required (at most 255 bytes)")
	case t.Origin == "" || t.Destination == "":
		return nil, errors.New("origin and destination are required")
	case len(t.PDUs) > MaxPDUs || len(t.EDUs) > MaxEDUs:
		return nil, fmt.Errorf("more than %d pdus or %d edus", MaxPDUs, MaxEDUs)
	}
	for i, p := range t.PDUs {
		if p == nil {
			return nil, fmt.Errorf("pdu %d is null", i)
		}
	}
	return &t, nil
}

// maxReqIDBytes bounds a request's req_id as txn_id is bounded: it is kept while the request
// is answered and echoed in the answer.
const maxReqIDBytes = 255

// DecodeRequest parses and bounds a request body (untrusted input).
func DecodeRequest(body []byte) (*Request, error) {
	if len(body) > MaxMessageBytes {
		return nil, fmt.Errorf("request of %d bytes is over %d", len(body), MaxMessageBytes)
	}
	var r Request
	if err := decodeStrict(body, &r); err != nil {
		return nil, fmt.Errorf("bad request JSON: %w", err)
	}
	if r.Type != TypeRequest || r.ReqID == "" || r.Origin == "" || r.Destination == "" || r.Op == "" {
		return nil, errors.New("request needs type, req_id, origin, destination and op")
	}
	if len(r.ReqID) > maxReqIDBytes {
		return nil, fmt.Errorf("req_id of %d bytes is over %d", len(r.ReqID), maxReqIDBytes)
	}
	return &r, nil
}

// DecodeResponse parses a response body (untrusted input).
func DecodeResponse(body []byte) (*Response, error) {
	if len(body) > 8*MaxMessageBytes {
		return nil, fmt.Errorf("response of %d bytes is too large", len(body))
	}
	var r Response
	if err := decodeStrict(body, &r); err != nil {
		return nil, fmt.Errorf("bad response JSON: %w", err)
	}
	if r.Type != TypeResponse || r.ReqID == "" {
		return nil, errors.New("response needs type and req_id")
	}
	if len(r.ReqID) > maxReqIDBytes {
		return nil, fmt.Errorf("req_id of %d bytes is over %d", len(r.ReqID), maxReqIDBytes)
	}
	return &r, nil
}

// EncodeSignedTransaction builds and signs a transaction of pdus (for tools and tests that
// speak federation directly).
func EncodeSignedTransaction(origin, dest, txnID string, key *SigningKey, pdus []*event.Event) ([]byte, error) {
	t := &Transaction{Type: TypeTxn, TxnID: txnID, Origin: origin, Destination: dest, OriginTS: time.Now().UnixMilli(),
		PDUs: pdus, EDUs: []EDU{}}
	if t.PDUs == nil {
		t.PDUs = []*event.Event{}
	}
	if err := signMessage(t, origin, key); err != nil {
		return nil, err
	}
	return json.Marshal(t)
}
