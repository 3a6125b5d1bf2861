package node

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"regexp"
	"strings"
)

var (
	localpartRe  = regexp.MustCompile(`^[a-z0-9._=-]{1,64}$`)
	aliasNameRe  = regexp.MustCompile(`^[a-z0-9._-]{1,64}$`)
	orgRe        = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?$`)
	opaqueRoomRe = regexp.MustCompile(`^[A-Za-z0-9._=-]{1,64}$`)
)

// splitID splits "@local:org", "!opaque:org" or "#name:org" at the first colon after the sigil.
func splitID(id string, sigil byte) (local, org string, ok bool) {
	if len(id) < 3 || id[0] != sigil || len(id) > 255 {
		return "", "", false
	}
	i := strings.IndexByte(id, ':')
	if i < 2 || i == len(id)-1 {
		return "", "", false
	}
	return id[1:i], id[i+1:], orgRe.MatchString(id[i+1:])
}

// ParseUserID checks a user id and returns its localpart and org.
func ParseUserID(id string) (local, org string, ok bool) {
	local, org, ok = splitID(id, '@')
	return local, org, ok && localpartRe.MatchString(local)
}

// ParseRoomID checks a room id.
func ParseRoomID(id string) (org string, ok bool) {
	opaque, org, ok := splitID(id, '!')
	return org, ok && opaqueRoomRe.MatchString(opaque)
}

// ParseAlias checks a room alias.
func ParseAlias(id string) (name, org string, ok bool) {
	name, org, ok = splitID(id, '#')
	return name, org, ok && aliasNameRe.MatchString(name)
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// newToken returns a new access token (256 random bits) and the hash that is stored.
func newToken() (token, hash string) {
	token = randomString(32)
	return token, hashToken(token)
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return base64.RawStdEncoding.EncodeToString(sum[:])
}

// newRoomID makes a room id of this org with 96 random bits.
func newRoomID(org string) string {
	return "!" + strings.NewReplacer("-", "x", "_", "y").Replace(randomString(12)) + ":" + org
}
