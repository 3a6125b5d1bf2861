// Package federation connects orgs: the org signing key, and (as federation grows) signing and
// checking of events and transactions, the outbox and the inbox over AMQP.
package federation

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
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
