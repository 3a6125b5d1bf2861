package event

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
)

// Errors returned (wrapped, with detail) by VerifySignature.
var (
	ErrNoSignature  = errors.New("event: no signature")
	ErrBadSignature = errors.New("event: bad signature")
)

// Sign signs the redacted form of e with priv and stores the unpadded
// standard base64 signature in e.Signatures[origin][keyID]. Signing the
// redacted form keeps signatures verifiable after redaction.
func Sign(e *Event, origin, keyID string, priv ed25519.PrivateKey) error {
	if len(priv) != ed25519.PrivateKeySize {
		return fmt.Errorf("sign: private key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	msg, err := RedactedForm(e)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	sig := ed25519.Sign(priv, msg)
	if e.Signatures == nil {
		e.Signatures = make(map[string]map[string]string)
	}
	if e.Signatures[origin] == nil {
		e.Signatures[origin] = make(map[string]string)
	}
	e.Signatures[origin][keyID] = base64.RawStdEncoding.EncodeToString(sig)
	return nil
}

// VerifySignature checks e.Signatures[origin][keyID] against the redacted
// form of e.
func VerifySignature(e *Event, origin, keyID string, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("verify signature: public key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	msg, err := RedactedForm(e)
	if err != nil {
		return fmt.Errorf("verify signature: %w", err)
	}
	s, ok := e.Signatures[origin][keyID]
	if !ok {
		return fmt.Errorf("verify signature: %w from %s key %s", ErrNoSignature, origin, keyID)
	}
	// Strict decoding refuses non-zero padding bits, so one signature has a
	// single accepted spelling.
	sig, err := base64.RawStdEncoding.Strict().DecodeString(s)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("verify signature: %w: malformed signature from %s key %s", ErrBadSignature, origin, keyID)
	}
	if !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("verify signature: %w from %s key %s", ErrBadSignature, origin, keyID)
	}
	return nil
}
