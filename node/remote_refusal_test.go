package node

import (
	"fmt"
	"strings"
	"testing"

	"github.com/parley-chat/parley/federation"
)

// TestRemoteRefusalChecksThePeersCode: a peer org's refusal reaches the client with its code
// only if that code is one a refusal carries; a token code (on which the web client logs out)
// or a code of no refusal becomes M_UNKNOWN, naming it, and an empty message says who refused.
func TestRemoteRefusalChecksThePeersCode(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		code     string
		contains string
	}{
		{"a refusal", &federation.Error{Code: "M_FORBIDDEN", Message: "banned"}, "M_FORBIDDEN", "banned"},
		{"wrapped", fmt.Errorf("join: %w", &federation.Error{Code: "M_NOT_FOUND", Message: "no room"}), "M_NOT_FOUND", "no room"},
		{"unknown token", &federation.Error{Code: "M_UNKNOWN_TOKEN", Message: "bye"}, "M_UNKNOWN", `"M_UNKNOWN_TOKEN": bye`},
		{"missing token", &federation.Error{Code: "M_MISSING_TOKEN", Message: "x"}, "M_UNKNOWN", `"M_MISSING_TOKEN"`},
		{"malformed", &federation.Error{Code: "nope", Message: "x"}, "M_UNKNOWN", `"nope"`},
		{"empty message", &federation.Error{Code: "M_FORBIDDEN"}, "M_FORBIDDEN", "refused by other.example"},
		{"not a refusal", fmt.Errorf("dial: refused"), "M_UNAVAILABLE", "dial: refused"},
	} {
		got := remoteRefusal("other.example", tc.err)
		if got.code != tc.code || !strings.Contains(got.msg, tc.contains) {
			t.Errorf("%s: %s %q, want %s …%s…", tc.name, got.code, got.msg, tc.code, tc.contains)
		}
	}
}
