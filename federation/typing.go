package federation

import (
	"fmt"
	"strings"
	"time"
)

// Typing notices from other orgs (m.typing EDUs): decoded strictly, and shown only for what is
// left of their timeout.

// Typing is the content of an m.typing EDU.
type Typing struct {
	RoomID    string `json:"room_id"`
	UserID    string `json:"user_id"`
	Typing    bool   `json:"typing"`
	TimeoutMS int64  `json:"timeout_ms"`
}

// maxTypingTimeout is the longest a remote typing notice shows; one without a timeout, or with
// a longer one, shows for defaultTypingTimeout.
const (
	maxTypingTimeout     = 120 * time.Second
	defaultTypingTimeout = 30 * time.Second
)

// DecodeTyping parses the content of an m.typing EDU from origin (untrusted input): strict
// JSON, a room id and a user of origin.
func DecodeTyping(origin string, content []byte) (*Typing, error) {
	if len(content) > maxPresenceBytes {
		return nil, fmt.Errorf("m.typing content of %d bytes is over %d", len(content), maxPresenceBytes)
	}
	var c Typing
	if err := decodeStrict(content, &c); err != nil {
		return nil, fmt.Errorf("bad m.typing JSON: %w", err)
	}
	if len(c.RoomID) > 255 || !strings.HasPrefix(c.RoomID, "!") || roomOrg(c.RoomID) == "" {
		return nil, fmt.Errorf("room_id %q is not a room id", c.RoomID)
	}
	if len(c.UserID) > 255 || !strings.HasPrefix(c.UserID, "@") || userOrg(c.UserID) != origin {
		return nil, fmt.Errorf("user %q is not of origin %s", c.UserID, origin)
	}
	return &c, nil
}

// Left is how much longer a notice sent at sent shows at now: its timeout counts from when it
// was sent, so a notice the broker held back shows only for what is left of it. A sender's
// clock ahead of this org's does not lengthen it.
func (c *Typing) Left(sent, now time.Time) time.Duration {
	timeout := time.Duration(c.TimeoutMS) * time.Millisecond
	if timeout <= 0 || timeout > maxTypingTimeout {
		timeout = defaultTypingTimeout
	}
	if age := now.Sub(sent); age > 0 {
		timeout -= age
	}
	return timeout
}
