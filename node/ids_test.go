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

var idGrammarSeeds = []string{
	"", "a", "A", "-", ".", "a-", "-a", "ab", "a.b", "a_b", "a=b", "a:1", "a:", ":1", "a:123456",
	"a:12345", "a:1:2", "acme.test", "acme.test:8448", "Acme.test", "acme..test", "a b", "é",
	"a\x00", "!x", strings.Repeat("a", 64), strings.Repeat("a", 65), strings.Repeat("a", 253),
	strings.Repeat("a", 254), strings.Repeat("a", 253) + ":1", "a" + strings.Repeat(".", 251) + "a",
	"a" + strings.Repeat(".", 252) + "a", "0", "0-", "9.9:0", "a.-b", "AbC_z=9.-",
}

func checkIDGrammars(t *testing.T, s string) {
	t.Helper()
	for _, g := range idGrammarRegexps {
		if want, got := g.pattern.MatchString(s), g.matcher.MatchString(s); want != got {
			t.Errorf("%s %q: table says %v, pattern says %v", g.name, s, got, want)
		}
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
