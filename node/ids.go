package node

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"
)

// The id grammars. They are checked on every send, so they are byte tables rather than
// regexps; TestIDGrammarsMatchTheirRegexps holds them to the patterns in their comments.
var (
	localpartChars  = newCharset(lower+digits+"._=-", 64)       // ^[a-z0-9._=-]{1,64}$
	aliasNameChars  = newCharset(lower+digits+"._-", 64)        // ^[a-z0-9._-]{1,64}$
	opaqueRoomChars = newCharset(upper+lower+digits+"._=-", 64) // ^[A-Za-z0-9._=-]{1,64}$
	orgName         = orgGrammar{}                              // ^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?$
	hostChars       = newCharset(lower+digits+".-", 251)        // the org's inner characters
	hostEdge        = newCharset(lower+digits, 1)               // its first and last
	portDigits      = newCharset(digits, 5)                     // its port
)

const (
	lower  = "abcdefghijklmnopqrstuvwxyz"
	upper  = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	digits = "0123456789"
)

// charset matches strings of 1 to max bytes, each in a fixed set.
type charset struct {
	allowed [256]bool
	max     int
}

func newCharset(chars string, max int) *charset {
	c := &charset{max: max}
	for i := 0; i < len(chars); i++ {
		c.allowed[chars[i]] = true
	}
	return c
}

// MatchString reports whether s is 1 to max bytes of the set.
func (c *charset) MatchString(s string) bool {
	if len(s) == 0 || len(s) > c.max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !c.allowed[s[i]] {
			return false
		}
	}
	return true
}

// orgGrammar matches an org: a host name of 1 to 253 bytes that starts and ends with a letter
// or digit, then an optional port of 1 to 5 digits.
type orgGrammar struct{}

// MatchString reports whether s is an org.
func (orgGrammar) MatchString(s string) bool {
	host := s
	if i := strings.IndexByte(s, ':'); i >= 0 {
		host = s[:i]
		if !portDigits.MatchString(s[i+1:]) {
			return false
		}
	}
	if host == "" || !hostEdge.allowed[host[0]] || !hostEdge.allowed[host[len(host)-1]] {
		return false
	}
	return len(host) <= 2 || hostChars.MatchString(host[1:len(host)-1])
}

// splitID splits "@local:org", "!opaque:org" or "#name:org" at the first colon after the sigil.
func splitID(id string, sigil byte) (local, org string, ok bool) {
	if len(id) < 3 || id[0] != sigil || len(id) > 255 {
		return "", "", false
	}
	i := strings.IndexByte(id, ':')
	if i < 2 || i == len(id)-1 {
		return "", "", false
	}
	return id[1:i], id[i+1:], orgName.MatchString(id[i+1:])
}

// ParseUserID checks a user id and returns its localpart and org.
func ParseUserID(id string) (local, org string, ok bool) {
	local, org, ok = splitID(id, '@')
	return local, org, ok && localpartChars.MatchString(local)
}

// ParseRoomID checks a room id.
func ParseRoomID(id string) (org string, ok bool) {
	opaque, org, ok := splitID(id, '!')
	return org, ok && opaqueRoomChars.MatchString(opaque)
}

// ParseAlias checks a room alias.
func ParseAlias(id string) (name, org string, ok bool) {
	name, org, ok = splitID(id, '#')
	return name, org, ok && aliasNameChars.MatchString(name)
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
