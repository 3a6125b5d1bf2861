package node

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzOriginHeader: the Origin and Authorization headers of an upgrade or a logout
// (untrusted) never panic checkOrigin, canonicalOrigin or bearer. canonicalOrigin writes
// scheme://host[:port], nothing else, and is idempotent; an allowed origin is one of the set,
// in that form; bearer reads a token only after the "Bearer " scheme.
func FuzzOriginHeader(f *testing.F) {
	for _, s := range [][2]string{
		{"", ""},
		{"https://chat.example", "Bearer abc"},
		{"HTTPS://Chat.Example:443", "bearer abc"},
		{"http://localhost:8080", "BEARER  abc  "},
		{"http://127.0.0.1:8080", "Bearer "},
		{"http://[::1]:8080", "Bearer"},
		{"http://[::1]", "Bearer\tabc"},
		{"http://[fe80::1%25en0]:80", "Basic YWxhZGRpbjpvcGVu"},
		{"https://chat.example.evil.example", "bearer\x00abc"},
		{"https://chat.example/", " Bearer abc"},
		{"https://chat.example/path?q#f", "Bearer\u00a0abc"},
		{"https://u:p@chat.example", "Bearer \xff"},
		{"https://@chat.example", "Bearerabc"},
		{"null", "Bearer a b"},
		{"//chat.example", "bearer \r\n"},
		{"chat.example", "B"},
		{"http://", "Bearer  "},
		{"http://:80", "Bearer\x00"},
		{"http://x:080", "Bearer ééé"},
		{"http://x:", "Bearer x"},
		{"http://a%25b", "x"},
		{"http://%C3%A9.example", "Bearer é"},
		{"http://a<b>", "Bearer <"},
		{"ws://chat.example", "Bearer ws"},
		{"http://chat.example:99999", "Bearer 9"},
		{"https://chat.example#", "Bearer #"},
		{"https://chat.example?", "Bearer ?"},
		{"mailto:x@chat.example", "Bearer m"},
		{"https://\u212aiosk.example", "Bearer k"}, // KELVIN SIGN
		{"https://%E2%84%AAiosk.example", "Bearer k"},
		{"https://k\u0130osk.example", "Bearer i"},
	} {
		f.Add(s[0], s[1])
	}
	srv := &Server{origins: allowedOrigins(Options{Listen: "127.0.0.1:8080", PublicURL: "https://chat.example",
		AllowedOrigins: []string{"https://App.example:443/", "http://[::1]:9000", "https://kiosk.example"}})}
	f.Fuzz(func(t *testing.T, origin, authorization string) {
		r, _ := http.NewRequest(http.MethodGet, "http://x/v1/ws", nil)
		r.Header["Origin"] = []string{origin}
		r.Header["Authorization"] = []string{authorization}

		allowed := srv.checkOrigin(r)
		if origin == "" && !allowed {
			t.Fatal("a request without an origin (not a browser) was refused")
		}
		if u, err := url.Parse(origin); err == nil {
			if c, ok := canonicalOrigin(u); ok {
				checkCanonicalOrigin(t, origin, c)
			}
			if allowed && origin != "" {
				c, ok := canonicalOrigin(u)
				if !ok || !srv.origins[c] || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
					t.Fatalf("origin %q allowed as %q (%v)", origin, c, ok)
				}
				// The set's origins are ASCII, as browsers write them: so is an origin it allows.
				if !isASCII(u.Hostname()) {
					t.Fatalf("origin %q allowed as %q: a host of other characters", origin, c)
				}
			}
		} else if allowed && origin != "" {
			t.Fatalf("origin %q allowed though it does not parse: %v", origin, err)
		}

		token := bearer(r)
		if token == "" {
			return
		}
		if len(authorization) <= 7 || !strings.EqualFold(authorization[:7], "bearer ") {
			t.Fatalf("bearer(%q) = %q without the scheme", authorization, token)
		}
		if token != strings.TrimSpace(authorization[7:]) {
			t.Fatalf("bearer(%q) = %q", authorization, token)
		}
	})
}

// checkCanonicalOrigin holds c, canonicalOrigin's output for origin, to scheme://host[:port]
// and canonicalOrigin to giving it back unchanged.
func checkCanonicalOrigin(t *testing.T, origin, c string) {
	t.Helper()
	scheme, hostport, found := strings.Cut(c, "://")
	if !found || scheme != strings.ToLower(scheme) || hostport == "" || strings.ContainsAny(hostport, "/?#@") {
		t.Fatalf("canonicalOrigin(%q) = %q: not scheme://host[:port]", origin, c)
	}
	u, err := url.Parse(c)
	if err != nil {
		t.Fatalf("canonicalOrigin(%q) = %q, which does not parse: %v", origin, c, err)
	}
	if u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Opaque != "" {
		t.Fatalf("canonicalOrigin(%q) = %q, which has more than an origin: %#v", origin, c, u)
	}
	if again, ok := canonicalOrigin(u); !ok || again != c {
		t.Fatalf("canonicalOrigin(%q) = %q, but canonicalOrigin(%q) = %q, %v", origin, c, c, again, ok)
	}
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
