package bridge

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/parley-chat/parley/federation"
)

// TestRemoteRefusal: the home org's refusals and an org out of reach refuse the command with
// their code (not requeued: the command queue would wait through every delivery); a request
// cut short by this node's own stop, or an error without a federation code, comes again.
func TestRemoteRefusal(t *testing.T) {
	live := context.Background()
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name     string
		ctx      context.Context
		err      error
		wantCode string // "" = requeued
	}{
		{"refused by the home org", live, &federation.Error{Code: "M_FORBIDDEN", Message: "banned"}, "M_FORBIDDEN"},
		{"wrapped refusal", live, fmt.Errorf("join: %w", &federation.Error{Code: "M_NOT_FOUND", Message: "no room"}), "M_NOT_FOUND"},
		{"home org out of reach", live, &federation.Error{Code: "M_UNAVAILABLE", Message: "did not answer in time"}, "M_UNAVAILABLE"},
		{"this node stopping", stopped, &federation.Error{Code: "M_UNAVAILABLE", Message: "did not answer in time"}, ""},
		{"no federation code", live, errors.New("seal: broken"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rerr, err := remoteRefusal(tc.ctx, tc.err)
			switch {
			case tc.wantCode == "" && (rerr != nil || err == nil):
				t.Fatalf("got refusal %v, error %v; want it requeued", rerr, err)
			case tc.wantCode != "" && (rerr == nil || rerr.Code != tc.wantCode || err != nil):
				t.Fatalf("got refusal %v, error %v; want %s", rerr, err, tc.wantCode)
			}
		})
	}
}
