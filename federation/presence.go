package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/parley-chat/parley/consensus/state"
)

// Presence EDUs (m.presence).
//
// When a user of this org comes online (first session on any node) or goes offline (last
// session closed), the org's leader sends {"user_id","presence":"online"|"offline"} to every
// peer org that shares a federating room with the user. Only the leader sends: every node of
// the org sees each change (the nodes tell each other over the cluster channel), and each
// change must leave the org once.
//
// EDUs are transient and may be lost, and an org that crashes never says "offline". So the
// leader also re-sends "online" for each of its online users every PresenceRefresh, and a
// receiving org treats "online" as valid for PresenceTTL only: a user of a crashed (or cut
// off) org shows as offline at most PresenceTTL after the last word from it. Receivers keep
// remote presence in memory only; after a restart a remote user shows offline until the next
// refresh reaches it.

const (
	// PresenceRefresh is how often the leader re-sends "online" for its online users.
	PresenceRefresh = 60 * time.Second
	// PresenceTTL is how long a remote "online" holds without a refresh.
	PresenceTTL = 3 * PresenceRefresh

	maxPresenceBytes = 1024 // an m.presence content is two short strings
)

// Presence is the content of an m.presence EDU.
type Presence struct {
	UserID   string `json:"user_id"`
	Presence string `json:"presence"` // "online" or "offline"
}

var localpartRe = regexp.MustCompile(`^[a-z0-9._=-]{1,64}$`)

// DecodePresence parses and checks an m.presence EDU's content sent by origin (untrusted
// input): strict JSON of at most maxPresenceBytes, a well-formed user id of origin itself (an
// org speaks only for its own users), and a status of the client protocol's set.
func DecodePresence(origin string, content []byte) (*Presence, error) {
	if len(content) > maxPresenceBytes {
		return nil, fmt.Errorf("m.presence content of %d bytes is over %d", len(content), maxPresenceBytes)
	}
	var p Presence
	if err := decodeStrict(content, &p); err != nil {
		return nil, fmt.Errorf("bad m.presence JSON: %w", err)
	}
	if len(p.UserID) > 255 || !strings.HasPrefix(p.UserID, "@") {
		return nil, fmt.Errorf("user_id %q is not a user id", p.UserID)
	}
	local, org, ok := strings.Cut(p.UserID[1:], ":")
	if !ok || !localpartRe.MatchString(local) {
		return nil, fmt.Errorf("user_id %q is not a user id", p.UserID)
	}
	if org != origin {
		return nil, fmt.Errorf("user %s is not of origin %s", p.UserID, origin)
	}
	switch p.Presence {
	case "online", "offline":
	default:
		return nil, errors.New(`presence must be "online" or "offline"`)
	}
	return &p, nil
}

// SendPresence tells the peer orgs that share a room with user, a user of this org, that
// their presence changed. Called on every node for every change; only the leader sends.
func (s *Service) SendPresence(user, status string) {
	if !s.opts.Cluster.IsLeader() || userOrg(user) != s.opts.Org {
		return
	}
	content, err := json.Marshal(Presence{UserID: user, Presence: status})
	if err != nil {
		return
	}
	for _, dest := range s.presenceDests(user) {
		s.sendEDU(dest, EDU{Type: "m.presence", Content: content})
	}
}

// presenceDests lists the peer orgs with a joined member in a federating room user is joined to.
func (s *Service) presenceDests(user string) []string {
	store := s.opts.Cluster.Store()
	rooms, err := store.UserRooms(user)
	if err != nil {
		s.log.Warn("federation: presence: list rooms", "user", user, "err", err)
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range rooms {
		if r.Membership != state.Join {
			continue
		}
		if room, ok := store.Room(r.RoomID); !ok || !room.Federate {
			continue
		}
		for _, org := range store.JoinedOrgs(r.RoomID, s.opts.Org) {
			if _, peer := s.opts.Peers[org]; peer && !seen[org] {
				seen[org] = true
				out = append(out, org)
			}
		}
	}
	sort.Strings(out)
	return out
}

// refreshPresence re-sends, while this node leads, "online" for every online user of the org
// to the peers that share a room with them, so that remote orgs can let presence lapse.
func (s *Service) refreshPresence(ctx context.Context) {
	if s.opts.OnlineUsers == nil {
		return
	}
	t := time.NewTicker(PresenceRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sendOnline(s.opts.OnlineUsers())
		}
	}
}

// sendOnline sends "online" for users, grouped per destination org, MaxEDUs per transaction.
func (s *Service) sendOnline(users []string) {
	byDest := map[string][]EDU{}
	for _, u := range users {
		if userOrg(u) != s.opts.Org {
			continue
		}
		content, err := json.Marshal(Presence{UserID: u, Presence: "online"})
		if err != nil {
			continue
		}
		for _, dest := range s.presenceDests(u) {
			byDest[dest] = append(byDest[dest], EDU{Type: "m.presence", Content: content})
		}
	}
	for dest, edus := range byDest {
		for len(edus) > 0 {
			n := min(len(edus), MaxEDUs)
			s.sendEDUs(dest, edus[:n])
			edus = edus[n:]
		}
	}
}

// applyPresence shows a remote user's presence to the local users who share a room with them.
// ts is the transaction's origin_ts: transient EDUs sent from different goroutines or nodes of
// the origin may arrive out of order, and a late "online" must not undo a newer "offline".
func (s *Service) applyPresence(origin string, content json.RawMessage, ts int64) {
	p, err := DecodePresence(origin, content)
	if err != nil {
		s.log.Warn("federation: presence dropped", "origin", origin, "reason", err)
		return
	}
	if s.opts.OnPresence == nil || !s.sharesRoom(p.UserID) {
		// Only users joined to a room here are tracked: a peer naming arbitrary users must
		// not grow this org's memory.
		return
	}
	s.opts.OnPresence(p.UserID, p.Presence, ts, PresenceTTL)
}

// sharesRoom reports whether a remote user is joined to a federating room known here.
func (s *Service) sharesRoom(user string) bool {
	store := s.opts.Cluster.Store()
	rooms, err := store.UserRooms(user)
	if err != nil {
		return false
	}
	for _, r := range rooms {
		if r.Membership != state.Join {
			continue
		}
		if room, ok := store.Room(r.RoomID); ok && room.Federate {
			return true
		}
	}
	return false
}

// presenceAfterJoin tells the orgs in a room a local user just joined that the user is online
// (they are: they asked to join), rather than leave them showing the user offline until the
// next refresh. Sent from whichever node handled the join: it happens once, and the user's
// later changes come from the leader as usual.
func (s *Service) presenceAfterJoin(user, roomID string) {
	content, err := json.Marshal(Presence{UserID: user, Presence: "online"})
	if err != nil {
		return
	}
	for _, dest := range s.opts.Cluster.Store().JoinedOrgs(roomID, s.opts.Org) {
		if _, peer := s.opts.Peers[dest]; peer {
			s.sendEDU(dest, EDU{Type: "m.presence", Content: content})
		}
	}
}
