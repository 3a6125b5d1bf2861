package node

import (
	"regexp"
	"strings"
	"testing"
)

// The id grammars as the protocol writes them; the byte tables in ids.go must agree.
var idGrammarRegexps = []struct {
	name    string
	pattern *regexp.Regexp
	matcher interface{ MatchString(string) bool }
}{
	{"localpart", regexp.MustCompile(`^[a-z0-9._=-]{1,64}$`), localpartChars},
	{"alias name", regexp.MustCompile(`^[a-z0-9._-]{1,64}$`), aliasNameChars},
	{"opaque room", regexp.MustCompile(`^[A-Za-z0-9._=-]{1,64}$`), opaqueRoomChars},
	{"org", regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?$`), orgName},
}

// The whole ids, "<sigil><local>:<org>" of at most 255 bytes: the local part holds no colon,
// so the id splits at its first colon.
const orgPattern = `[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?(?::[0-9]{1,5})?`

var (
	userIDPattern  = regexp.MustCompile(`^@([a-z0-9._=-]{1,64}):(` + orgPattern + `)$`)
	roomIDPattern  = regexp.MustCompile(`^!([A-Za-z0-9._=-]{1,64}):(` + orgPattern + `)$`)
	aliasPattern   = regexp.MustCompile(`^#([a-z0-9._-]{1,64}):(` + orgPattern + `)$`)
	splitIDPattern = regexp.MustCompile(`^[@!#]([^:]+):(` + orgPattern + `)$`) // any local part
)

var idGrammarSeeds = []string{
	"", "a", "A", "-", ".", "a-", "-a", "ab", "a.b", "a_b", "a=b", "a:1", "a:", ":1", "a:123456",
	"a:12345", "a:1:2", "acme.test", "acme.test:8448", "Acme.test", "acme..test", "a b", "é",
	"a\x00", "!x", strings.Repeat("a", 64), strings.Repeat("a", 65), strings.Repeat("a", 253),
	strings.Repeat("a", 254), strings.Repeat("a", 253) + ":1", "a" + strings.Repeat(".", 251) + "a",
	"a" + strings.Repeat(".", 252) + "a", "0", "0-", "9.9:0", "a.-b", "AbC_z=9.-",
	// Whole ids.
	"@alice:acme.test", "!AbC_9=x.-:acme.test:8448", "#general:acme.test", "@a:b", "!a:b", "#a:b",
	"@:b", "@a:", "@a", "@", ":a:b", "@a::1", "@a:b:", "@a:b:1:2", "@a:b:123456", "@a:b:c",
	"@A:b", "#a=b:c", "!A=b:c", "@a b:c", "@a:B", "@a:-b", "@a:b-", "@a\n:b", "@a:b\n", "\n@a:b",
	"@a:b\x00", "@é:b", "@a:\xff", "!a!b:c", "@@a:b", "#a:b#", "@a:b@c", "$e:b", "a:b",
	"@" + strings.Repeat("a", 64) + ":b", "@" + strings.Repeat("a", 65) + ":b",
	"@" + strings.Repeat("a", 64) + ":" + strings.Repeat("b", 189),           // 255 bytes
	"@" + strings.Repeat("a", 64) + ":" + strings.Repeat("b", 190),           // 256 bytes
	"@" + strings.Repeat("a", 64) + ":" + strings.Repeat("b", 184) + ":8448", // 255 bytes
	"@" + strings.Repeat("a", 64) + ":" + strings.Repeat("b", 185) + ":8448", // 256 bytes
	"!a:" + strings.Repeat("b", 253) + ":1", "!a:" + strings.Repeat("b", 251),
}

func checkIDGrammars(t *testing.T, s string) {
	t.Helper()
	for _, g := range idGrammarRegexps {
		if want, got := g.pattern.MatchString(s), g.matcher.MatchString(s); want != got {
			t.Errorf("%s %q: table says %v, pattern says %v", g.name, s, got, want)
		}
	}
	checkWholeID(t, "splitID @", s, splitIDPattern, s != "" && s[0] == '@', func(s string) (string, string, bool) { return splitID(s, '@') })
	checkWholeID(t, "splitID !", s, splitIDPattern, s != "" && s[0] == '!', func(s string) (string, string, bool) { return splitID(s, '!') })
	checkWholeID(t, "splitID #", s, splitIDPattern, s != "" && s[0] == '#', func(s string) (string, string, bool) { return splitID(s, '#') })
	checkWholeID(t, "ParseUserID", s, userIDPattern, true, ParseUserID)
	checkWholeID(t, "ParseRoomID", s, roomIDPattern, true, func(s string) (string, string, bool) {
		org, ok := ParseRoomID(s)
		if !ok {
			return "", org, false
		}
		return s[1:strings.IndexByte(s, ':')], org, true // ParseRoomID gives no local part
	})
	checkWholeID(t, "ParseAlias", s, aliasPattern, true, ParseAlias)
}

// checkWholeID holds a whole-id parser to its pattern and the 255-byte limit: it accepts s
// exactly when both do (and sigilOK, for splitID, which is given the sigil), and then returns
// the local part and the org split at the first colon.
func checkWholeID(t *testing.T, name, s string, pattern *regexp.Regexp, sigilOK bool, parse func(string) (string, string, bool)) {
	t.Helper()
	local, org, ok := parse(s)
	m := pattern.FindStringSubmatch(s)
	if want := m != nil && len(s) <= 255 && sigilOK; ok != want {
		t.Errorf("%s(%q) ok %v, pattern and length say %v", name, s, ok, want)
		return
	}
	if !ok {
		return
	}
	i := strings.IndexByte(s, ':')
	if local != m[1] || org != m[2] || local != s[1:i] || org != s[i+1:] {
		t.Errorf("%s(%q) = %q, %q; pattern %q, %q", name, s, local, org, m[1], m[2])
	}
}

func TestIDGrammarsMatchTheirRegexps(t *testing.T) {
	for _, s := range idGrammarSeeds {
		checkIDGrammars(t, s)
	}
	// Every string of up to three bytes over an alphabet holding each class's members and
	// neighbours.
	alphabet := "aZ09._=-:!@ \x00\xff"
	var all func(prefix string, n int)
	all = func(prefix string, n int) {
		checkIDGrammars(t, prefix)
		if n == 0 {
			return
		}
		for i := 0; i < len(alphabet); i++ {
			all(prefix+alphabet[i:i+1], n-1)
		}
	}
	all("", 3)
}

func FuzzIDGrammars(f *testing.F) {
	for _, s := range idGrammarSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkIDGrammars(t, s) })
}
