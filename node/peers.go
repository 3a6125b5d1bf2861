package node

import (
	"encoding/json"
	"sort"
	"time"
)

// Typing and presence between the nodes of one org travel as peerSignals over the cluster
// channel (consensus.Cluster.Broadcast), never through the Raft log.

const (
	presenceRefresh = 20 * time.Second // each node re-announces its online users this often
	presenceExpiry  = 3 * presenceRefresh
)

type peerSignal struct {
	Kind      string   `json:"k"` // "typing", "presence", "online_set", "org_presence"
	Node      string   `json:"node"`
	Room      string   `json:"room,omitempty"`
	User      string   `json:"user,omitempty"`
	Typing    bool     `json:"typing,omitempty"`
	TimeoutMS int64    `json:"timeout_ms,omitempty"`
	Online    bool     `json:"online,omitempty"`
	Users     []string `json:"users,omitempty"`
	TS        int64    `json:"ts,omitempty"` // org_presence: when the user's org sent it
}

func (h *hub) sendPeers(sig peerSignal) {
	if h.peers == nil {
		return
	}
	sig.Node = h.nodeID
	b, err := json.Marshal(sig)
	if err != nil {
		return
	}
	h.peers(b)
}

func (h *hub) announcePresence(user string, online bool) {
	h.sendPeers(peerSignal{Kind: "presence", User: user, Online: online})
}

// fromPeer applies a signal another node sent.
func (h *hub) fromPeer(msg []byte) {
	if !h.ready.Load() {
		return // still starting: nobody is connected here to tell
	}
	var sig peerSignal
	if err := json.Unmarshal(msg, &sig); err != nil || sig.Node == "" || sig.Node == h.nodeID {
		return
	}
	switch sig.Kind {
	case "typing":
		if sig.TimeoutMS <= 0 || sig.TimeoutMS > 120000 {
			sig.TimeoutMS = 30000
		}
		h.setTyping(sig.Room, sig.User, sig.Typing, time.Duration(sig.TimeoutMS)*time.Millisecond)
	case "presence":
		h.setRemote(sig.Node, func(users map[string]bool) []string {
			if sig.Online == users[sig.User] {
				return nil
			}
			if sig.Online {
				users[sig.User] = true
			} else {
				delete(users, sig.User)
			}
			return []string{sig.User}
		})
	case "org_presence": // a user of another org, as the leader heard it (presence_remote.go)
		// Bounded in milliseconds first: a huge count overflows a Duration, to a moment even.
		ttl := time.Duration(min(max(sig.TimeoutMS, 0), maxPresenceTTL.Milliseconds())) * time.Millisecond
		h.setOrgPresence(sig.User, sig.Online, sig.TS, ttl)
	case "online_set":
		h.setRemote(sig.Node, func(users map[string]bool) []string {
			next := make(map[string]bool, len(sig.Users))
			var changed []string
			for _, u := range sig.Users {
				next[u] = true
				if !users[u] {
					changed = append(changed, u)
				}
			}
			for u := range users {
				if !next[u] {
					changed = append(changed, u)
				}
			}
			for u := range users {
				delete(users, u)
			}
			for u := range next {
				users[u] = true
			}
			return changed
		})
	}
}

// setRemote updates one node's online set and pushes presence for users whose org-wide
// status changed.
func (h *hub) setRemote(node string, update func(map[string]bool) []string) {
	type before struct {
		user   string
		online bool
	}
	h.remoteMu.Lock()
	rn := h.remote[node]
	if rn == nil {
		rn = &remoteNode{users: map[string]bool{}}
		h.remote[node] = rn
	}
	rn.seen = time.Now()
	// Record each touched user's org-wide status before the change.
	snapshot := make(map[string]bool, len(rn.users))
	for u := range rn.users {
		snapshot[u] = true
	}
	changed := update(rn.users)
	h.remoteMu.Unlock()
	var flips []before
	for _, u := range changed {
		wasOnline := snapshot[u] || h.onlineElsewhere(u, node)
		nowOnline := h.online(u)
		if wasOnline != nowOnline {
			flips = append(flips, before{u, nowOnline})
		}
	}
	for _, f := range flips {
		status := "offline"
		if f.online {
			status = "online"
		}
		h.presence(f.user, status)
	}
}

// onlineElsewhere: online on this node or on a remote node other than skip.
func (h *hub) onlineElsewhere(user, skip string) bool {
	if h.sessionCount(user) > 0 {
		return true
	}
	h.remoteMu.Lock()
	defer h.remoteMu.Unlock()
	for id, rn := range h.remote {
		if id != skip && rn.users[user] && time.Since(rn.seen) < presenceExpiry {
			return true
		}
	}
	return false
}

func (h *hub) onlineRemotely(user string) bool {
	h.remoteMu.Lock()
	defer h.remoteMu.Unlock()
	for _, rn := range h.remote {
		if rn.users[user] && time.Since(rn.seen) < presenceExpiry {
			return true
		}
	}
	return false
}

// refreshPresence re-announces this node's online users and forgets nodes gone silent.
func (h *hub) refreshPresence() {
	defer h.wg.Done()
	t := time.NewTicker(presenceRefresh)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			h.mu.RLock()
			users := make([]string, 0, len(h.sessions))
			for u := range h.sessions {
				users = append(users, u)
			}
			h.mu.RUnlock()
			sort.Strings(users)
			h.sendPeers(peerSignal{Kind: "online_set", Users: users})
			h.expireRemote()
			h.expireOrgPresence() // presence_remote.go
		}
	}
}

func (h *hub) expireRemote() {
	h.remoteMu.Lock()
	var gone []string
	for id, rn := range h.remote {
		if time.Since(rn.seen) >= presenceExpiry {
			for u := range rn.users {
				gone = append(gone, u)
			}
			delete(h.remote, id)
		}
	}
	h.remoteMu.Unlock()
	for _, u := range gone {
		if !h.online(u) {
			h.presence(u, "offline")
		}
	}
}
