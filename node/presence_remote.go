package node

import (
	"sort"
	"sync"
	"time"
)

// Presence of users of other orgs (m.presence EDUs, federation/presence.go).
//
// The org's leader receives another org's presence EDUs and hands them to SetRemotePresence,
// which records them, pushes a change to the local users who share a room with that user, and
// passes the EDU to the org's other nodes over the cluster channel ("org_presence"), where the
// same happens. It is kept in memory only, never in the Raft log: presence is transient, and
// a user's org re-sends "online" every federation.PresenceRefresh. An "online" lapses after the
// TTL the leader was given (federation.PresenceTTL) unless refreshed, so a crashed org's users
// turn offline here within that time instead of staying online forever. EDUs may arrive out of
// order, so each status carries the time its org sent it and an older one is ignored.

const (
	maxOrgPresence     = 100000           // remote users tracked at most; more are shown offline
	defaultPresenceTTL = 3 * time.Minute  // for a signal that names none
	maxPresenceTTL     = 10 * time.Minute // longer TTLs are capped
)

// orgPresence is the last known presence of users of other orgs. Offline entries are kept
// (until the TTL passes) for their timestamp only: a late "online" sent before them is ignored.
type orgPresence struct {
	mu      sync.Mutex
	entries map[string]orgEntry
}

type orgEntry struct {
	online bool
	expiry time.Time // an online entry lapses then; any entry is forgotten then
	ts     int64     // when the user's org sent it (Unix ms; 0: unknown)
}

func newOrgPresence() *orgPresence { return &orgPresence{entries: make(map[string]orgEntry)} }

// set records a status the user's org sent at ts and reports whether the user's shown
// presence changed. A status older than the one recorded is out of order and ignored.
func (p *orgPresence) set(user string, online bool, ttl time.Duration, ts int64, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, known := p.entries[user]
	if known && now.Before(e.expiry) && ts < e.ts {
		return false
	}
	if !known && len(p.entries) >= maxOrgPresence {
		return false // full: shown offline
	}
	was := known && e.online && now.Before(e.expiry)
	p.entries[user] = orgEntry{online: online, expiry: now.Add(ttl), ts: ts}
	return was != online
}

func (p *orgPresence) online(user string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.entries[user]
	return ok && e.online && time.Now().Before(e.expiry)
}

// expire forgets the entries whose time passed and returns the users who were online.
func (p *orgPresence) expire(now time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var gone []string
	for u, e := range p.entries {
		if !now.Before(e.expiry) {
			if e.online {
				gone = append(gone, u)
			}
			delete(p.entries, u)
		}
	}
	sort.Strings(gone)
	return gone
}

// setOrgPresence records a remote user's presence and pushes a change to local users.
func (h *hub) setOrgPresence(user string, online bool, ts int64, ttl time.Duration) {
	if user == "" {
		return
	}
	if ttl <= 0 {
		ttl = defaultPresenceTTL
	}
	ttl = min(ttl, maxPresenceTTL)
	if !h.orgs.set(user, online, ttl, ts, time.Now()) {
		return
	}
	status := "offline"
	if online {
		status = "online"
	}
	h.pushPresence(user, status)
}

// expireOrgPresence turns remote users offline whose org stopped refreshing them.
func (h *hub) expireOrgPresence() {
	for _, u := range h.orgs.expire(time.Now()) {
		h.pushPresence(u, "offline")
	}
}

// onlineUsers lists the org's users online on this node or (as last announced) another.
func (h *hub) onlineUsers() []string {
	seen := map[string]bool{}
	h.mu.RLock()
	for u := range h.sessions {
		seen[u] = true
	}
	h.mu.RUnlock()
	h.remoteMu.Lock()
	for _, rn := range h.remote {
		if time.Since(rn.seen) < presenceExpiry {
			for u := range rn.users {
				seen[u] = true
			}
		}
	}
	h.remoteMu.Unlock()
	out := make([]string, 0, len(seen))
	for u := range seen {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}

// SetRemotePresence shows the presence of a user of another org (an m.presence EDU their org
// sent at ts, Unix ms) to the local users who share a room with them, on this node and, through
// the cluster channel, on the org's other nodes. An "online" lapses after ttl unless set again;
// a status older than the last one applied for the user is ignored (EDUs can overtake each
// other).
func (srv *Server) SetRemotePresence(user, status string, ts int64, ttl time.Duration) {
	online := status == "online"
	srv.hub.setOrgPresence(user, online, ts, ttl)
	srv.hub.sendPeers(peerSignal{Kind: "org_presence", User: user, Online: online, TS: ts, TimeoutMS: ttl.Milliseconds()})
}

// OnlineUsers lists this org's users online on any of its nodes (as this node knows it).
func (srv *Server) OnlineUsers() []string { return srv.hub.onlineUsers() }

// SetPresenceSender has f called with every org-wide presence change of a local user
// (federation sends it to the orgs that share a room with the user). Safe to call any time.
func (srv *Server) SetPresenceSender(f func(user, status string)) {
	if f == nil {
		srv.hub.onPresence.Store(nil)
		return
	}
	srv.hub.onPresence.Store(&f)
}
