// Package federation connects orgs: the org signing key, and (as federation grows) signing and
// checking of events and transactions, the outbox and the inbox over AMQP.
package federation

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/parley-chat/parley/consensus"
	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
)

// SigningKey is an org's ed25519 key with its key id (the part after "ed25519:").
type SigningKey struct {
	KeyID   string
	Private ed25519.PrivateKey
}

var keyIDRe = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// GenerateKey makes a new signing key with a random key id.
func GenerateKey() (*SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("federation: generate key: %w", err)
	}
	idBytes := make([]byte, 6)
	if _, err := rand.Read(idBytes); err != nil {
		return nil, fmt.Errorf("federation: key id: %w", err)
	}
	id := strings.NewReplacer("-", "_", "+", "_", "/", "_").Replace(base64.RawURLEncoding.EncodeToString(idBytes))
	return &SigningKey{KeyID: id, Private: priv}, nil
}

// PublicKeyString is the public key as peers configure it: "ed25519:KEYID:BASE64".
func (k *SigningKey) PublicKeyString() string {
	pub := k.Private.Public().(ed25519.PublicKey)
	return "ed25519:" + k.KeyID + ":" + base64.RawStdEncoding.EncodeToString(pub)
}

// Marshal encodes the key file: one line "ed25519 KEYID BASE64-SEED".
func (k *SigningKey) Marshal() []byte {
	return []byte("ed25519 " + k.KeyID + " " + base64.RawStdEncoding.EncodeToString(k.Private.Seed()) + "\n")
}

// ParseKey decodes a key file.
func ParseKey(data []byte) (*SigningKey, error) {
	fields := strings.Fields(string(data))
	if len(fields) != 3 || fields[0] != "ed25519" || !keyIDRe.MatchString(fields[1]) {
		return nil, errors.New("federation: key file is not \"ed25519 KEYID SEED\"")
	}
	seed, err := base64.RawStdEncoding.DecodeString(fields[2])
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, errors.New("federation: key file seed is not 32 bytes of unpadded base64")
	}
	return &SigningKey{KeyID: fields[1], Private: ed25519.NewKeyFromSeed(seed)}, nil
}

// WriteNewKeyFile writes k to path, refusing to overwrite an existing file.
func WriteNewKeyFile(path string, k *SigningKey) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("federation: write key: %w", err)
	}
	if _, err := f.Write(k.Marshal()); err != nil {
		f.Close()
		return fmt.Errorf("federation: write key: %w", err)
	}
	return f.Close()
}

// ParsePublicKey parses "ed25519:KEYID:BASE64".
func ParsePublicKey(s string) (keyID string, pub ed25519.PublicKey, err error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 || parts[0] != "ed25519" || !keyIDRe.MatchString(parts[1]) {
		return "", nil, fmt.Errorf("federation: public key %q is not ed25519:KEYID:BASE64", s)
	}
	raw, err := base64.RawStdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return "", nil, fmt.Errorf("federation: public key %q: not 32 bytes of unpadded base64", s)
	}
	return parts[1], ed25519.PublicKey(raw), nil
}

// Keys provides the org's signing key: from federation.key_file when configured, else the
// key in the replicated state (made once by the first leader, so every node signs alike).
type Keys struct {
	cluster *consensus.Cluster
	file    *SigningKey

	mu     sync.Mutex
	cached *SigningKey
}

// NewKeys reads keyFile when set.
func NewKeys(cluster *consensus.Cluster, keyFile string) (*Keys, error) {
	k := &Keys{cluster: cluster}
	if keyFile != "" {
		data, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("federation: read key file: %w", err)
		}
		key, err := ParseKey(data)
		if err != nil {
			return nil, fmt.Errorf("federation: key file %s: %w", keyFile, err)
		}
		k.file = key
	}
	return k, nil
}

// Current returns the key, if there is one yet.
func (k *Keys) Current() (*SigningKey, bool) {
	if k.file != nil {
		return k.file, true
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cached != nil {
		return k.cached, true
	}
	if k.cluster == nil { // a Keys built by hand (tests), with no key file either
		return nil, false
	}
	stored, ok := k.cluster.Store().SigningKey()
	if !ok || len(stored.Seed) != ed25519.SeedSize {
		return nil, false
	}
	k.cached = &SigningKey{KeyID: stored.KeyID, Private: ed25519.NewKeyFromSeed(stored.Seed)}
	return k.cached, true
}

// Ensure makes sure the replicated key exists: whenever this node leads and there is none,
// it proposes a new one (the first committed wins). It returns when there is a key or ctx ends.
func (k *Keys) Ensure(ctx context.Context, log *slog.Logger) {
	for {
		if _, ok := k.Current(); ok {
			return
		}
		if k.cluster.IsLeader() {
			key, err := GenerateKey()
			if err == nil {
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err = k.cluster.Propose(pctx, &state.Command{Kind: state.KindSigningKey,
					SigningKey: &state.SigningKey{KeyID: key.KeyID, Seed: key.Private.Seed()}})
				cancel()
			}
			if err != nil {
				log.Warn("could not store the org signing key yet", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Sign signs an event of this org with the org key.
func (k *Keys) Sign(e *event.Event, org string) error {
	key, ok := k.Current()
	if !ok {
		return errors.New("federation: the org signing key is not ready yet")
	}
	return event.Sign(e, org, signatureKey(key.KeyID), key.Private)
}

// signatureKey is how a signature names the key that made it: the key id, "ed25519:" + KEYID
// (amqp.md), in events' signatures as in messages'.
func signatureKey(keyID string) string { return "ed25519:" + keyID }
