package federation

import (
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// rotated is a.test after a key rotation: old signed before it, cur signs now.
type rotated struct {
	old, cur fuzzPeer
}

func newRotated(t *testing.T) rotated {
	return rotated{old: newFuzzPeer(t), cur: newFuzzPeer(t)}
}

// peer is how b.test configures a.test: with previous, the old key is still accepted.
func (r rotated) peer(previous bool) PeerKey {
	p := r.cur.peer
	if previous {
		p.Previous = []PublicKey{{KeyID: r.old.key.KeyID, Public: r.old.key.Private.Public().(ed25519.PublicKey)}}
	}
	return p
}

// signedEvent is an event of a.test signed the way this org signs its events (Keys.Sign).
func signedEvent(t *testing.T, key *SigningKey) *event.Event {
	t.Helper()
	e := &event.Event{RoomID: "!room:a.test", Sender: "@alice:a.test", Origin: "a.test", OriginTS: 1700000000000,
		Type: "m.room.message", Content: []byte(`{"body":"hi","msgtype":"m.text"}`), PrevEvents: []string{"$prev"}, Depth: 3}
	if err := event.Seal(e); err != nil {
		t.Fatal(err)
	}
	if err := event.Sign(e, "a.test", signatureKey(key.KeyID), key.Private); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestRotatedKeysVerify: after a.test rotates its key, b.test configured with the new key and
// the old one in previous_keys accepts transactions signed with either (some signed with the
// old key may still be queued) and events signed with either (old events keep their
// signatures); configured with the new key alone, it refuses what the old key signed; a key
// it does not know is refused whatever id it claims.
func TestRotatedKeysVerify(t *testing.T) {
	r := newRotated(t)
	withOld, newOnly := r.peer(true), r.peer(false)

	for _, c := range []struct {
		name   string
		signer fuzzPeer
		peer   PeerKey
		ok     bool
	}{
		{"new key, both configured", r.cur, withOld, true},
		{"old key, both configured", r.old, withOld, true},
		{"new key, new only", r.cur, newOnly, true},
		{"old key, new only", r.old, newOnly, false},
	} {
		tx, err := DecodeTransaction(validTxn(t, c.signer))
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyMessage(tx, "a.test", c.peer); (err == nil) != c.ok {
			t.Errorf("transaction, %s: %v, want ok=%v", c.name, err, c.ok)
		}
		if err := verifyEvent(signedEvent(t, c.signer.key), "a.test", c.peer); (err == nil) != c.ok {
			t.Errorf("event, %s: %v, want ok=%v", c.name, err, c.ok)
		}
	}

	// A stranger's key under the old key's id: the id picks the configured key, which fails.
	stranger := newFuzzPeer(t)
	stranger.key.KeyID = r.old.key.KeyID
	tx, err := DecodeTransaction(validTxn(t, stranger))
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyMessage(tx, "a.test", withOld); !errors.Is(err, ErrBadSignature) {
		t.Errorf("transaction by a stranger's key under a known id: %v, want ErrBadSignature", err)
	}
	if err := verifyEvent(signedEvent(t, stranger.key), "a.test", withOld); !errors.Is(err, event.ErrBadSignature) {
		t.Errorf("event by a stranger's key under a known id: %v, want event.ErrBadSignature", err)
	}
	// An event signed under an id a.test never had.
	unknown := newFuzzPeer(t)
	if err := verifyEvent(signedEvent(t, unknown.key), "a.test", withOld); !errors.Is(err, event.ErrNoSignature) {
		t.Errorf("event by an unknown key id: %v, want event.ErrNoSignature", err)
	}
}

// TestOwnPreviousKeys: this org's own older events, signed before its rotation, verify when
// federation.previous_keys lists the old key, and only then.
func TestOwnPreviousKeys(t *testing.T) {
	r := newRotated(t)
	own := &Keys{file: r.cur.key}
	old := signedEvent(t, r.old.key)
	for _, c := range []struct {
		previous []PublicKey
		ok       bool
	}{
		{nil, false},
		{r.peer(true).Previous, true},
	} {
		s := &Service{opts: Options{Org: "a.test", Keys: own, PreviousKeys: c.previous}}
		keys, ok := s.originKeys("a.test")
		if !ok || keys.KeyID != r.cur.key.KeyID {
			t.Fatalf("own keys: %+v, %v", keys, ok)
		}
		if err := verifyEvent(old, "a.test", keys); (err == nil) != c.ok {
			t.Errorf("own old event with previous keys %v: %v, want ok=%v", c.previous, err, c.ok)
		}
		if err := verifyEvent(signedEvent(t, r.cur.key), "a.test", keys); err != nil {
			t.Errorf("own new event: %v", err)
		}
	}
}

// TestLegacyEventSignatureKey: events name their signing key by key id, "ed25519:KEYID"; events
// Parley signed before that (under the bare KEYID) are still stored at other orgs and relayed
// again, and still verify, with the same key and only with it.
func TestLegacyEventSignatureKey(t *testing.T) {
	p := newFuzzPeer(t)
	e := signedEvent(t, p.key)
	if _, ok := e.Signatures["a.test"]["ed25519:"+p.key.KeyID]; !ok || len(e.Signatures["a.test"]) != 1 {
		t.Fatalf("signatures %v, want one under ed25519:%s", e.Signatures, p.key.KeyID)
	}
	legacy := e.Clone()
	legacy.Signatures = map[string]map[string]string{"a.test": {p.key.KeyID: e.Signatures["a.test"]["ed25519:"+p.key.KeyID]}}
	if err := verifyEvent(legacy, "a.test", p.peer); err != nil {
		t.Errorf("legacy spelling: %v", err)
	}
	if err := verifyEvent(legacy, "a.test", newFuzzPeer(t).peer); err == nil {
		t.Error("legacy spelling verified with another org's key")
	}
}

// TestKeysWithoutAnySource: a Keys with neither a key file nor a cluster has no key, rather
// than failing on the missing cluster.
func TestKeysWithoutAnySource(t *testing.T) {
	if k, ok := (&Keys{}).Current(); ok || k != nil {
		t.Fatalf("Current() = %v, %v; want no key", k, ok)
	}
	s := &Service{opts: Options{Org: "a.test", Keys: &Keys{}}}
	if _, ok := s.ownKeys(); ok {
		t.Fatal("own keys without a key")
	}
}
