package node

// Authorization audited, not assumed: one table walks every WebSocket op and every HTTP route
// as each kind of caller, and asserts the exact answer. A new op or route without rows here
// fails the test (see the coverage checks at the end of each part).

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// Callers of the authorization table.
const (
	asNone     = "no token"             // (a) an unauthenticated connection
	asOutsider = "non-member"           // (b) a user of this org who is not in the room
	asMember   = "member without power" // (c) joined, power 0
	asBanned   = "banned"               // (d) banned from the room
	asInvited  = "invited"              // an invite not yet accepted (private room)
	asRemote   = "other org"            // (e) remote room ids, aliases and user ids
)

type authzRow struct {
	as    string
	who   *client // nil for asNone
	frame map[string]any
	want  string // "" for success, else the error code
}

const clusterSecret = "authz-cluster-secret"

func TestAuthorization(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(o *Options) { o.ClusterSecret = clusterSecret })
	reg := func() (*client, string) {
		id, tok := n.register("")
		return n.dial(tok), id
	}
	alice, _ := reg()     // creator of every room: power 100
	bob, bobID := reg()   // joined, power 0
	carol, _ := reg()     // never in the rooms
	dave, daveID := reg() // banned from both rooms
	erin, erinID := reg() // invited to the private room, not joined
	_, frankID := reg()   // a bystander to invite
	aliceID := alice.user

	// pub: public, alias; priv: private. bob is in both; dave joined pub, then was banned from
	// both (never having been in priv).
	pub := alice.createRoom(map[string]any{"visibility": "public", "alias": "authz-pub", "name": "Pub"})
	priv := alice.createRoom(map[string]any{"visibility": "private", "name": "Priv", "invite": []string{bobID, erinID}})
	scratch := alice.createRoom(map[string]any{"visibility": "public"}) // successes that change membership happen here
	bob.ok(map[string]any{"op": "join", "room": pub})
	bob.ok(map[string]any{"op": "join", "room": priv})
	dave.ok(map[string]any{"op": "join", "room": "#authz-pub:test.local"})
	alice.ok(map[string]any{"op": "ban", "room_id": pub, "user_id": daveID})
	alice.ok(map[string]any{"op": "ban", "room_id": priv, "user_id": daveID})
	msgPub := alice.send(pub, "a1", "alice in pub")
	msgPriv := alice.send(priv, "a2", "alice in priv")
	bobMsg := bob.send(pub, "b1", "bob in pub")

	const (
		remoteRoom  = "!elsewhere:other.test"
		remoteAlias = "#elsewhere:other.test"
		remoteUser  = "@zed:other.test"
	)
	f := func(op string, kv ...any) map[string]any {
		m := map[string]any{"op": op}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	msg := map[string]any{"msgtype": "m.text", "body": "authz"}
	name := map[string]any{"name": "renamed"}

	rows := []authzRow{
		// create_room: any authenticated user; remote invitees cannot be reached.
		{asNone, nil, f("create_room"), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("create_room"), ""},
		{asMember, bob, f("create_room", "visibility", "public"), ""},
		{asBanned, dave, f("create_room"), ""},
		{asRemote, bob, f("create_room", "invite", []string{remoteUser}), "M_UNAVAILABLE"},

		// join: a public room is open to a non-member, a private room needs an invite, a ban
		// bars both, by id or alias.
		{asNone, nil, f("join", "room", pub), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("join", "room", priv), "M_FORBIDDEN"},
		{asOutsider, carol, f("join", "room", scratch), ""},
		{asOutsider, carol, f("join", "room", "!nosuchroom:test.local"), "M_NOT_FOUND"},
		{asMember, bob, f("join", "room", pub), ""}, // already joined: answered, nothing new
		{asMember, bob, f("join", "room", scratch), ""},
		{asBanned, dave, f("join", "room", pub), "M_FORBIDDEN"},
		{asBanned, dave, f("join", "room", "#authz-pub:test.local"), "M_FORBIDDEN"},
		{asBanned, dave, f("join", "room_id", priv), "M_FORBIDDEN"},
		{asRemote, carol, f("join", "room", remoteRoom), "M_UNAVAILABLE"},
		{asRemote, carol, f("join", "room", remoteAlias), "M_UNAVAILABLE"},

		// leave: only a member (or invitee) leaves.
		{asNone, nil, f("leave", "room_id", pub), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("leave", "room_id", priv), "M_FORBIDDEN"},
		{asMember, bob, f("leave", "room_id", scratch), ""},
		{asBanned, dave, f("leave", "room_id", pub), "M_FORBIDDEN"},
		{asRemote, bob, f("leave", "room_id", remoteRoom), "M_UNAVAILABLE"},

		// invite: joined members (invite level 0); never a banned user or a member.
		{asNone, nil, f("invite", "room_id", pub, "user_id", frankID), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("invite", "room_id", priv, "user_id", frankID), "M_FORBIDDEN"},
		{asMember, bob, f("invite", "room_id", pub, "user_id", frankID), ""},
		{asMember, bob, f("invite", "room_id", pub, "user_id", daveID), "M_FORBIDDEN"},  // banned
		{asMember, bob, f("invite", "room_id", pub, "user_id", aliceID), "M_FORBIDDEN"}, // already in
		{asBanned, dave, f("invite", "room_id", pub, "user_id", frankID), "M_FORBIDDEN"},
		{asInvited, erin, f("invite", "room_id", priv, "user_id", frankID), "M_FORBIDDEN"},
		{asRemote, bob, f("invite", "room_id", pub, "user_id", remoteUser), "M_UNAVAILABLE"},
		{asRemote, bob, f("invite", "room_id", remoteRoom, "user_id", frankID), "M_UNAVAILABLE"},

		// kick, ban, unban: power 50 and more than the target's.
		{asNone, nil, f("kick", "room_id", pub, "user_id", bobID), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("kick", "room_id", pub, "user_id", bobID), "M_FORBIDDEN"},
		{asMember, bob, f("kick", "room_id", pub, "user_id", aliceID), "M_FORBIDDEN"},
		{asBanned, dave, f("kick", "room_id", pub, "user_id", bobID), "M_FORBIDDEN"},
		{asRemote, bob, f("kick", "room_id", remoteRoom, "user_id", aliceID), "M_UNAVAILABLE"},

		{asNone, nil, f("ban", "room_id", pub, "user_id", bobID), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("ban", "room_id", pub, "user_id", bobID), "M_FORBIDDEN"},
		{asMember, bob, f("ban", "room_id", pub, "user_id", aliceID), "M_FORBIDDEN"},
		{asMember, bob, f("ban", "room_id", pub, "user_id", frankID), "M_FORBIDDEN"},
		{asBanned, dave, f("ban", "room_id", pub, "user_id", bobID), "M_FORBIDDEN"},
		{asRemote, bob, f("ban", "room_id", remoteRoom, "user_id", aliceID), "M_UNAVAILABLE"},

		{asNone, nil, f("unban", "room_id", pub, "user_id", daveID), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("unban", "room_id", pub, "user_id", daveID), "M_FORBIDDEN"},
		{asMember, bob, f("unban", "room_id", pub, "user_id", daveID), "M_FORBIDDEN"},
		{asBanned, dave, f("unban", "room_id", pub, "user_id", daveID), "M_FORBIDDEN"},
		{asRemote, bob, f("unban", "room_id", remoteRoom, "user_id", daveID), "M_UNAVAILABLE"},

		// send: joined members only, public room or not.
		{asNone, nil, f("send", "room_id", pub, "txn_id", "n", "content", msg), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("send", "room_id", pub, "txn_id", "c1", "content", msg), "M_FORBIDDEN"},
		{asOutsider, carol, f("send", "room_id", priv, "txn_id", "c2", "content", msg), "M_FORBIDDEN"},
		{asMember, bob, f("send", "room_id", pub, "txn_id", "b2", "content", msg), ""},
		{asBanned, dave, f("send", "room_id", pub, "txn_id", "d1", "content", msg), "M_FORBIDDEN"},
		{asInvited, erin, f("send", "room_id", priv, "txn_id", "e1", "content", msg), "M_FORBIDDEN"},
		{asRemote, bob, f("send", "room_id", remoteRoom, "txn_id", "b3", "content", msg), "M_UNAVAILABLE"},

		// set_state: power 50; nobody raises their own power.
		{asNone, nil, f("set_state", "room_id", pub, "type", "m.room.name", "content", name), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("set_state", "room_id", pub, "type", "m.room.name", "content", name), "M_FORBIDDEN"},
		{asMember, bob, f("set_state", "room_id", pub, "type", "m.room.name", "content", name), "M_FORBIDDEN"},
		{asMember, bob, f("set_state", "room_id", pub, "type", "m.room.power_levels",
			"content", map[string]any{"users": map[string]any{aliceID: 100, bobID: 100}}), "M_FORBIDDEN"},
		{asBanned, dave, f("set_state", "room_id", pub, "type", "m.room.topic", "content", map[string]any{"topic": "t"}), "M_FORBIDDEN"},
		{asRemote, bob, f("set_state", "room_id", remoteRoom, "type", "m.room.name", "content", name), "M_UNAVAILABLE"},

		// redact: one's own events; another's needs power 50.
		{asNone, nil, f("redact", "room_id", pub, "event_id", msgPub), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("redact", "room_id", pub, "event_id", msgPub), "M_FORBIDDEN"},
		{asOutsider, carol, f("redact", "room_id", priv, "event_id", msgPriv), "M_FORBIDDEN"},
		{asMember, bob, f("redact", "room_id", pub, "event_id", msgPub), "M_FORBIDDEN"},
		{asMember, bob, f("redact", "room_id", pub, "event_id", msgPriv), "M_NOT_FOUND"}, // another room's event
		{asMember, bob, f("redact", "room_id", pub, "event_id", bobMsg), ""},
		{asBanned, dave, f("redact", "room_id", pub, "event_id", msgPub), "M_FORBIDDEN"},
		{asRemote, bob, f("redact", "room_id", remoteRoom, "event_id", msgPub), "M_UNAVAILABLE"},

		// typing, read, history, members: joined members only.
		{asNone, nil, f("typing", "room_id", pub, "typing", false), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("typing", "room_id", pub, "typing", true), "M_FORBIDDEN"},
		{asOutsider, carol, f("typing", "room_id", priv, "typing", true), "M_FORBIDDEN"},
		{asMember, bob, f("typing", "room_id", pub, "typing", false), ""},
		{asBanned, dave, f("typing", "room_id", pub, "typing", true), "M_FORBIDDEN"},
		{asInvited, erin, f("typing", "room_id", priv, "typing", true), "M_FORBIDDEN"},
		{asRemote, bob, f("typing", "room_id", remoteRoom, "typing", true), "M_UNAVAILABLE"},

		{asNone, nil, f("read", "room_id", pub, "event_id", msgPub), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("read", "room_id", priv, "event_id", msgPriv), "M_FORBIDDEN"},
		{asMember, bob, f("read", "room_id", pub, "event_id", msgPub), ""},
		{asMember, bob, f("read", "room_id", pub, "event_id", msgPriv), "M_NOT_FOUND"}, // another room's event
		{asBanned, dave, f("read", "room_id", pub, "event_id", msgPub), "M_FORBIDDEN"},
		{asInvited, erin, f("read", "room_id", priv, "event_id", msgPriv), "M_FORBIDDEN"},
		{asRemote, bob, f("read", "room_id", remoteRoom, "event_id", msgPub), "M_UNAVAILABLE"},

		{asNone, nil, f("history", "room_id", pub), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("history", "room_id", pub), "M_FORBIDDEN"}, // public, but not joined
		{asOutsider, carol, f("history", "room_id", priv), "M_FORBIDDEN"},
		{asMember, bob, f("history", "room_id", priv), ""},
		{asBanned, dave, f("history", "room_id", pub), "M_FORBIDDEN"},
		{asBanned, dave, f("history", "room_id", priv), "M_FORBIDDEN"},
		{asInvited, erin, f("history", "room_id", priv), "M_FORBIDDEN"},
		{asRemote, bob, f("history", "room_id", remoteRoom), "M_UNAVAILABLE"},

		{asNone, nil, f("members", "room_id", pub), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("members", "room_id", pub), "M_FORBIDDEN"},
		{asOutsider, carol, f("members", "room_id", priv), "M_FORBIDDEN"},
		{asMember, bob, f("members", "room_id", priv), ""},
		{asBanned, dave, f("members", "room_id", pub), "M_FORBIDDEN"},
		{asInvited, erin, f("members", "room_id", priv), "M_FORBIDDEN"},
		{asRemote, bob, f("members", "room_id", remoteRoom), "M_UNAVAILABLE"},

		// sync, rooms, ping: anyone authenticated (what they return is checked below).
		{asNone, nil, f("sync"), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("sync"), ""},
		{asMember, bob, f("sync"), ""},
		{asBanned, dave, f("sync"), ""},
		{asNone, nil, f("rooms"), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("rooms"), ""},
		{asMember, bob, f("rooms"), ""},
		{asBanned, dave, f("rooms"), ""},
		{asNone, nil, f("ping"), "M_MISSING_TOKEN"},
		{asOutsider, carol, f("ping"), ""},
		{asMember, bob, f("ping"), ""},
		{asBanned, dave, f("ping"), ""},
	}

	t.Run("ws", func(t *testing.T) {
		for i, row := range rows {
			op := row.frame["op"].(string)
			t.Run(op+"/"+row.as, func(t *testing.T) {
				frame := make(map[string]any, len(row.frame))
				for k, v := range row.frame {
					frame[k] = v
				}
				if row.who == nil {
					// The op as the first frame of a connection: refused, then closed.
					c := n.dialRaw(nil)
					frame["id"] = "first"
					writeFrame(t, c, frame)
					m := c.nextPush(nil)
					if m["op"] != "error" || m["code"] != row.want || m["id"] != "first" {
						t.Fatalf("row %d: got %v, want %s", i, m, row.want)
					}
					if code := waitClosed(t, c); code != closeAuth {
						t.Fatalf("row %d: close code %d, want %d", i, code, closeAuth)
					}
					return
				}
				m := row.who.request(frame)
				if row.want == "" {
					if m["op"] != "ok" {
						t.Fatalf("row %d: %v as %s: got %v, want ok", i, row.frame, row.as, m)
					}
					return
				}
				if m["op"] != "error" || m["code"] != row.want {
					t.Fatalf("row %d: %v as %s: got %v, want %s", i, row.frame, row.as, m, row.want)
				}
				if msg, _ := m["message"].(string); msg == "" {
					t.Fatalf("row %d: error without a message: %v", i, m)
				}
			})
		}
		// Every op has a row for each caller; ops that name a room or user also as another org.
		covered := map[string]map[string]bool{}
		for _, row := range rows {
			op := row.frame["op"].(string)
			if covered[op] == nil {
				covered[op] = map[string]bool{}
			}
			covered[op][row.as] = true
		}
		all := []string{"sync"}
		for op := range ops {
			if op != "auth" {
				all = append(all, op)
			}
		}
		sort.Strings(all)
		noRoom := map[string]bool{"sync": true, "rooms": true, "ping": true}
		for _, op := range all {
			need := []string{asNone, asOutsider, asMember, asBanned}
			if !noRoom[op] {
				need = append(need, asRemote)
			}
			for _, as := range need {
				if !covered[op][as] {
					t.Errorf("op %s has no authorization row as %q", op, as)
				}
			}
		}
	})

	// What the callers may read of the private room: nothing for the outsider and the banned
	// user, the invite and the room's public face for the invitee.
	t.Run("pulled", func(t *testing.T) {
		for _, c := range []*client{carol, dave} {
			if _, in := roomsOf(c)[priv]; in {
				t.Errorf("%s lists the private room", c.user)
			}
			rooms := c.ok(map[string]any{"op": "sync"})["rooms"].(map[string]any)
			if _, in := rooms[priv]; in {
				t.Errorf("%s's sync holds the private room: %v", c.user, rooms[priv])
			}
		}
		if row := roomsOf(erin)[priv]; row == nil || row["membership"] != "invite" {
			t.Errorf("invitee's room list: %v", row)
		}
		room, _ := erin.ok(map[string]any{"op": "sync"})["rooms"].(map[string]any)[priv].(map[string]any)
		if room == nil {
			t.Fatal("the invitee's sync lacks the invite")
		}
		for _, part := range []string{"state", "events"} {
			for _, e := range room[part].([]any) {
				ev := e.(map[string]any)
				switch ev["type"] {
				case "m.room.create", "m.room.name", "m.room.topic":
				case "m.room.member":
					if ev["state_key"] != erinID {
						t.Errorf("invitee sees another's membership: %v", ev)
					}
				default:
					t.Errorf("invitee sees %s in %s: %v", ev["type"], part, ev)
				}
			}
		}
	})

	t.Run("http", func(t *testing.T) {
		_, spareTok := n.register("")
		spare := strings.TrimSuffix(strings.TrimPrefix(frankID, "@"), ":test.local")
		loginTok := func() string {
			status, out := n.post("/v1/login", map[string]string{"username": spare, "password": "correct horse"}, "")
			if status != 200 {
				t.Fatalf("login: %d %v", status, out)
			}
			return out["access_token"].(string)
		}()
		type httpRow struct {
			name         string
			method, path string
			header       http.Header
			body         string
			status       int
			code         string // for JSON errors
			wantUpgrade  bool
		}
		hdr := func(kv ...string) http.Header {
			h := http.Header{}
			for i := 0; i < len(kv); i += 2 {
				h.Set(kv[i], kv[i+1])
			}
			return h
		}
		bearer := func(tok string) http.Header { return hdr("Authorization", "Bearer "+tok) }
		secret := hdr("X-Parley-Cluster-Secret", clusterSecret)
		wrong := hdr("X-Parley-Cluster-Secret", clusterSecret+"x")
		ws := hdr("Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13",
			"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		withWS := func(h http.Header) http.Header {
			out := ws.Clone()
			for k, v := range h {
				out[k] = v
			}
			return out
		}
		httpRows := []httpRow{
			{"register, no token", "POST", "/v1/register", nil, `{"username":"authz-new","password":"12345678"}`, 200, "", false},
			{"register, other org's name", "POST", "/v1/register", nil, `{"username":"zed:other.test","password":"12345678"}`, 400, "M_INVALID_USERNAME", false},
			{"login, wrong password", "POST", "/v1/login", nil, `{"username":"` + spare + `","password":"wrong horse"}`, 403, "M_FORBIDDEN", false},
			{"login, other org's user", "POST", "/v1/login", nil, `{"username":"zed:other.test","password":"correct horse"}`, 403, "M_FORBIDDEN", false},
			{"login, a user's token is no password", "POST", "/v1/login", bearer(spareTok), `{"username":"` + spare + `"}`, 403, "M_FORBIDDEN", false},
			{"logout, no token", "POST", "/v1/logout", nil, ``, 401, "M_UNKNOWN_TOKEN", false},
			{"logout, bad token", "POST", "/v1/logout", bearer("nope"), ``, 401, "M_UNKNOWN_TOKEN", false},
			{"logout, token in the query string", "POST", "/v1/logout?access_token=" + loginTok, nil, ``, 401, "M_UNKNOWN_TOKEN", false},
			{"logout, cluster secret is no token", "POST", "/v1/logout", secret, ``, 401, "M_UNKNOWN_TOKEN", false},
			{"logout, good token", "POST", "/v1/logout", bearer(loginTok), ``, 200, "", false},
			{"logout, logged out token", "POST", "/v1/logout", bearer(loginTok), ``, 401, "M_UNKNOWN_TOKEN", false},
			{"health, no token", "GET", "/v1/health", nil, ``, 200, "", false},
			{"federation key, no token", "GET", "/v1/federation/key", nil, ``, 200, "", false},
			{"metrics, no token", "GET", "/metrics", nil, ``, 200, "", false},
			{"web client, no token", "GET", "/", nil, ``, 200, "", false},
			{"ws, not an upgrade", "GET", "/v1/ws", nil, ``, 400, "", false},
			{"ws, no token: upgraded, auth frame due", "GET", "/v1/ws", ws, ``, 101, "", true},
			{"ws, bad query token", "GET", "/v1/ws?access_token=nope", ws, ``, 401, "M_UNKNOWN_TOKEN", false},
			{"ws, logged out query token", "GET", "/v1/ws?access_token=" + loginTok, ws, ``, 401, "M_UNKNOWN_TOKEN", false},
			{"ws, good query token", "GET", "/v1/ws?access_token=" + spareTok, ws, ``, 101, "", true},
			{"ws, foreign origin", "GET", "/v1/ws?access_token=" + spareTok, withWS(hdr("Origin", "http://evil.example")), ``, 403, "M_FORBIDDEN", false},
			{"cluster status, no secret", "GET", "/v1/cluster/status", nil, ``, 403, "M_FORBIDDEN", false},
			{"cluster status, wrong secret", "GET", "/v1/cluster/status", wrong, ``, 403, "M_FORBIDDEN", false},
			{"cluster status, a user's token", "GET", "/v1/cluster/status", bearer(spareTok), ``, 403, "M_FORBIDDEN", false},
			{"cluster status, secret", "GET", "/v1/cluster/status", secret, ``, 200, "", false},
			{"cluster join, no secret", "POST", "/v1/cluster/join", nil, `{"node_id":"x","raft_addr":"127.0.0.1:1"}`, 403, "M_FORBIDDEN", false},
			{"cluster join, wrong secret", "POST", "/v1/cluster/join", wrong, `{"node_id":"x","raft_addr":"127.0.0.1:1"}`, 403, "M_FORBIDDEN", false},
			{"cluster join, a user's token", "POST", "/v1/cluster/join", bearer(spareTok), `{"node_id":"x","raft_addr":"127.0.0.1:1"}`, 403, "M_FORBIDDEN", false},
			{"cluster join, secret (past the guard)", "POST", "/v1/cluster/join", secret, `{}`, 400, "M_INVALID_PARAM", false},
			{"cluster remove, no secret", "POST", "/v1/cluster/remove", nil, `{"node_id":"node1"}`, 403, "M_FORBIDDEN", false},
			{"cluster remove, wrong secret", "POST", "/v1/cluster/remove", wrong, `{"node_id":"node1"}`, 403, "M_FORBIDDEN", false},
			{"cluster remove, secret (past the guard)", "POST", "/v1/cluster/remove", secret, `{}`, 400, "M_INVALID_PARAM", false},
			{"cluster remove of the only voter", "POST", "/v1/cluster/remove", secret, `{"node_id":"node1"}`, 409, "M_INVALID_PARAM", false},
			{"add user, no secret", "POST", "/v1/admin/users", nil, `{"username":"by-admin","password":"12345678"}`, 403, "M_FORBIDDEN", false},
			{"add user, wrong secret", "POST", "/v1/admin/users", wrong, `{"username":"by-admin","password":"12345678"}`, 403, "M_FORBIDDEN", false},
			{"add user, a user's token", "POST", "/v1/admin/users", bearer(spareTok), `{"username":"by-admin","password":"12345678"}`, 403, "M_FORBIDDEN", false},
			{"add user, secret", "POST", "/v1/admin/users", secret, `{"username":"by-admin","password":"12345678"}`, 200, "", false},
			{"snapshot, no secret", "POST", "/v1/cluster/snapshot", nil, ``, 403, "M_FORBIDDEN", false},
			{"snapshot, wrong secret", "POST", "/v1/cluster/snapshot", wrong, ``, 403, "M_FORBIDDEN", false},
			{"snapshot, a user's token", "POST", "/v1/cluster/snapshot", bearer(spareTok), ``, 403, "M_FORBIDDEN", false},
			{"snapshot, secret", "POST", "/v1/cluster/snapshot", secret, ``, 200, "", false},
		}
		for _, tc := range httpRows {
			t.Run(tc.name, func(t *testing.T) {
				req, err := http.NewRequest(tc.method, n.url(tc.path), strings.NewReader(tc.body))
				if err != nil {
					t.Fatal(err)
				}
				for k, v := range tc.header {
					req.Header[k] = v
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if tc.wantUpgrade {
					if resp.StatusCode != http.StatusSwitchingProtocols {
						t.Fatalf("status %d, want 101", resp.StatusCode)
					}
					return // closing the body closes the connection
				}
				data, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != tc.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, data)
				}
				if tc.code != "" {
					var out map[string]any
					if err := json.Unmarshal(data, &out); err != nil || out["code"] != tc.code {
						t.Fatalf("body %s, want code %s", data, tc.code)
					}
				}
			})
		}
		// The cluster routes are still guarded after all that: the node is alone in its cluster.
		st, err := n.srv.cluster.Status()
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Members) != 1 || st.Members[0].ID != "node1" {
			t.Fatalf("the cluster changed: %+v", st.Members)
		}
		// Every route registered in routes() (read from http.go) has rows.
		src, err := os.ReadFile("http.go")
		if err != nil {
			t.Fatal(err)
		}
		routes := regexp.MustCompile(`mux\.Handle(?:Func)?\("(?:[A-Z]+ )?(/[^"]*)"`).FindAllStringSubmatch(string(src), -1)
		if len(routes) < 10 {
			t.Fatalf("found only %d routes in http.go", len(routes))
		}
		for _, route := range routes {
			if !slices.ContainsFunc(httpRows, func(r httpRow) bool { return strings.SplitN(r.path, "?", 2)[0] == route[1] }) {
				t.Errorf("route %s has no authorization row", route[1])
			}
		}
	})

	// Without a cluster secret the admin routes answer loopback clients only.
	t.Run("admin routes without a cluster secret", func(t *testing.T) {
		bare := startNode(t, nil)
		if status, body := bare.get("/v1/cluster/status"); status != 200 {
			t.Fatalf("status from loopback without a secret: %d %s", status, body)
		}
		ip := nonLoopbackIP()
		if ip == "" {
			t.Skip("no non-loopback address to connect from")
		}
		hc := fromIP(t, ip)
		for _, r := range []struct{ method, path, body string }{
			{"GET", "/v1/cluster/status", ``},
			{"POST", "/v1/cluster/join", `{"node_id":"evil","raft_addr":"192.0.2.1:7000"}`},
			{"POST", "/v1/cluster/remove", `{"node_id":"node1"}`},
			{"POST", "/v1/admin/users", `{"username":"evil","password":"12345678"}`},
			{"POST", "/v1/cluster/snapshot", ``},
		} {
			req, _ := http.NewRequest(r.method, bare.url(r.path), strings.NewReader(r.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Skipf("cannot reach the node from %s: %v", ip, err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var out map[string]any
			_ = json.Unmarshal(data, &out)
			if resp.StatusCode != 403 || out["code"] != "M_FORBIDDEN" {
				t.Errorf("%s %s from %s without a secret: %d %s, want 403 M_FORBIDDEN", r.method, r.path, ip, resp.StatusCode, data)
			}
		}
		st, err := bare.srv.cluster.Status()
		if err != nil || len(st.Members) != 1 {
			t.Fatalf("the cluster changed: %+v %v", st, err)
		}
	})

	t.Run("private room never pushed to non-members", func(t *testing.T) {
		gwen, gwenID := reg() // joined the private room, then kicked
		alice.ok(map[string]any{"op": "invite", "room_id": priv, "user_id": gwenID})
		gwen.ok(map[string]any{"op": "join", "room": priv})
		alice.ok(map[string]any{"op": "kick", "room_id": priv, "user_id": gwenID})
		watchers := []*client{carol, dave, erin, gwen}
		lobby := alice.createRoom(map[string]any{"visibility": "public"})
		for _, c := range watchers {
			c.ok(map[string]any{"op": "join", "room": lobby})
		}
		// Everything so far is behind the first marker.
		first := alice.send(lobby, "marker-1", "marker one")
		for _, c := range watchers {
			c.nextPush(func(m map[string]any) bool {
				return m["op"] == "event" && m["event"].(map[string]any)["event_id"] == first
			})
		}

		// The private room's life: messages, typing, receipts, state, membership, redaction.
		secret := bob.send(priv, "s1", "the secret")
		bob.ok(map[string]any{"op": "typing", "room_id": priv, "typing": true})
		alice.ok(map[string]any{"op": "read", "room_id": priv, "event_id": secret})
		alice.ok(map[string]any{"op": "set_state", "room_id": priv, "type": "m.room.topic", "content": map[string]any{"topic": "hush"}})
		alice.ok(map[string]any{"op": "invite", "room_id": priv, "user_id": frankID})
		bob.ok(map[string]any{"op": "redact", "room_id": priv, "event_id": secret})
		bob.ok(map[string]any{"op": "typing", "room_id": priv, "typing": false})
		members := membersOf(bob, priv) // bob, a member, sees it all
		if members[frankID]["membership"] != "invite" {
			t.Fatalf("members as seen by a member: %v", members)
		}

		second := alice.send(lobby, "marker-2", "marker two")
		for _, c := range watchers {
			for {
				m := c.nextPush(nil)
				if m["op"] == "event" && m["event"].(map[string]any)["event_id"] == second {
					break
				}
				room, _ := m["room_id"].(string)
				if ev, ok := m["event"].(map[string]any); ok {
					room, _ = ev["room_id"].(string)
				}
				if room == priv {
					t.Errorf("%s, not a member, was pushed %v", c.user, m)
				}
				if strings.Contains(mustJSON(t, m), "the secret") {
					t.Errorf("%s was pushed the secret: %v", c.user, m)
				}
			}
		}
		for _, c := range watchers {
			c.fails("M_FORBIDDEN", map[string]any{"op": "history", "room_id": priv})
			c.fails("M_FORBIDDEN", map[string]any{"op": "members", "room_id": priv})
		}
	})

	t.Run("sync since a token from before a ban or a declined invite", func(t *testing.T) {
		ivan, ivanID := reg() // never in the room; banned while a message is sent
		judy, judyID := reg() // invited, declines; a message is sent meanwhile
		since := func(c *client) string { return c.ok(map[string]any{"op": "sync"})["next"].(string) }
		ivanSince, judySince := since(ivan), since(judy)
		alice.ok(map[string]any{"op": "invite", "room_id": priv, "user_id": judyID})
		bob.send(priv, "s2", "second secret")
		alice.ok(map[string]any{"op": "ban", "room_id": priv, "user_id": ivanID})
		judy.ok(map[string]any{"op": "leave", "room_id": priv})
		var leaked []string
		for _, tc := range []struct {
			c     *client
			since string
		}{{ivan, ivanSince}, {judy, judySince}} {
			rooms := tc.c.ok(map[string]any{"op": "sync", "since": tc.since})["rooms"].(map[string]any)
			room, _ := rooms[priv].(map[string]any)
			if room == nil {
				continue
			}
			for _, e := range room["events"].([]any) {
				ev := e.(map[string]any)
				if ev["type"] == "m.room.message" {
					leaked = append(leaked, tc.c.user+" got "+mustJSON(t, ev["content"]))
				}
			}
		}
		if len(leaked) > 0 {
			t.Fatalf("private room messages reached non-members through sync since: %v", leaked)
		}
	})
}

// nonLoopbackIP is an address of this host that is not loopback ("" if there is none).
func nonLoopbackIP() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	return ""
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Banning someone who was never in a room must not push them the ban: it would tell them the
// private room exists. A member who is banned does hear of it.
func TestBanOfNeverMemberIsNotPushed(t *testing.T) {
	n := startNode(t, nil)
	_, tokA := n.register("alice")
	eveID, tokE := n.register("eve")
	alice, eve := n.dial(tokA), n.dial(tokE)
	secret := alice.createRoom(map[string]any{"visibility": "private", "name": "secret"})
	alice.ok(map[string]any{"op": "ban", "room_id": secret, "user_id": eveID})
	// A later push eve does get: everything pushed to her before it has arrived by then.
	other := alice.createRoom(map[string]any{"visibility": "private", "invite": []any{eveID}})
	for {
		m := eve.nextPush(func(m map[string]any) bool { return m["op"] == "event" })
		ev := m["event"].(map[string]any)
		if ev["room_id"] == secret {
			t.Fatalf("eve, never in the room, was pushed %v", ev)
		}
		if ev["room_id"] == other {
			break
		}
	}

	// Eve joins a room and is banned from it: that ban she hears about.
	pub := alice.createRoom(map[string]any{"visibility": "public"})
	eve.ok(map[string]any{"op": "join", "room_id": pub})
	alice.ok(map[string]any{"op": "ban", "room_id": pub, "user_id": eveID})
	eve.nextPush(func(m map[string]any) bool {
		ev, _ := m["event"].(map[string]any)
		c, _ := ev["content"].(map[string]any)
		return ev["room_id"] == pub && ev["state_key"] == eveID && c["membership"] == "ban"
	})
}

// TestBanOfNeverMemberIsNotSynced: a sync since a token from before the ban gives exactly what
// was pushed after that token (the contract), so the ban TestBanOfNeverMemberIsNotPushed keeps
// from a user who was never in the room is not in their sync either. It was: the sync answer
// named the private room, its ban event and who banned them.
func TestBanOfNeverMemberIsNotSynced(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tokA := n.register("")
	eveID, tokE := n.register("")
	alice, eve := n.dial(tokA), n.dial(tokE)
	secret := alice.createRoom(map[string]any{"visibility": "private", "name": "secret"})
	next := eve.ok(map[string]any{"op": "sync"})["next"] // after the room's creation: not s0
	alice.ok(map[string]any{"op": "ban", "room_id": secret, "user_id": eveID})
	// A room eve is invited to after the ban: her sync since next must hold it.
	other := alice.createRoom(map[string]any{"visibility": "private", "invite": []any{eveID}})
	rooms := eve.ok(map[string]any{"op": "sync", "since": next})["rooms"].(map[string]any)
	if rooms[other] == nil {
		t.Fatalf("eve's sync lacks the room she was invited to: %v", rooms)
	}
	if r, ok := rooms[secret]; ok {
		t.Fatalf("eve, never in the room and never pushed its ban, got it in sync: %s", mustJSON(t, r))
	}
}

// The ban of someone never in the room is kept from them (TestBanOfNeverMemberIsNotPushed),
// and so must every later change of their membership be: an unban, a ban again. They were
// pushed, naming the private room, its id and who unbanned or banned them. One who was joined,
// then banned and unbanned, hears of both.
func TestUnbanOfNeverMemberIsNotPushed(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tokA := n.register("")
	eveID, tokE := n.register("")
	alice, eve := n.dial(tokA), n.dial(tokE)
	secret := alice.createRoom(map[string]any{"visibility": "private", "name": "secret"})
	alice.ok(map[string]any{"op": "ban", "room_id": secret, "user_id": eveID})
	alice.ok(map[string]any{"op": "unban", "room_id": secret, "user_id": eveID})
	alice.ok(map[string]any{"op": "ban", "room_id": secret, "user_id": eveID})
	alice.ok(map[string]any{"op": "unban", "room_id": secret, "user_id": eveID})

	// Eve joins a second room, is banned and unbanned there: all three she hears of, the
	// unban last, so by then every push of the secret room's changes has arrived.
	other := alice.createRoom(map[string]any{"visibility": "public"})
	eve.ok(map[string]any{"op": "join", "room": other})
	alice.ok(map[string]any{"op": "ban", "room_id": other, "user_id": eveID})
	alice.ok(map[string]any{"op": "unban", "room_id": other, "user_id": eveID})
	var heard []string
	for {
		m := eve.nextPush(func(m map[string]any) bool { return m["op"] == "event" })
		ev := m["event"].(map[string]any)
		if ev["room_id"] == secret {
			t.Fatalf("eve, never in the room, was pushed %s", mustJSON(t, ev))
		}
		if ev["room_id"] != other || ev["state_key"] != eveID {
			continue
		}
		c, _ := ev["content"].(map[string]any)
		heard = append(heard, c["membership"].(string))
		if c["membership"] == "leave" {
			break
		}
	}
	if want := []string{"join", "ban", "leave"}; !slices.Equal(heard, want) {
		t.Fatalf("eve heard %v of the room she was in, want %v", heard, want)
	}
}

// TestUnbanOfNeverMemberIsNotSynced: what TestUnbanOfNeverMemberIsNotPushed keeps from a user
// never in the room is not in their sync either, whether the last change is an unban or a
// ban again; a member banned and unbanned gets their unban.
func TestUnbanOfNeverMemberIsNotSynced(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	_, tokA := n.register("")
	eveID, tokE := n.register("")
	alice, eve := n.dial(tokA), n.dial(tokE)
	secret := alice.createRoom(map[string]any{"visibility": "private", "name": "secret"})
	other := alice.createRoom(map[string]any{"visibility": "public"})
	eve.ok(map[string]any{"op": "join", "room": other})
	next := eve.ok(map[string]any{"op": "sync"})["next"]
	alice.ok(map[string]any{"op": "ban", "room_id": secret, "user_id": eveID})
	alice.ok(map[string]any{"op": "ban", "room_id": other, "user_id": eveID})
	alice.ok(map[string]any{"op": "unban", "room_id": secret, "user_id": eveID})
	alice.ok(map[string]any{"op": "unban", "room_id": other, "user_id": eveID})

	check := func(after string) {
		t.Helper()
		rooms := eve.ok(map[string]any{"op": "sync", "since": next})["rooms"].(map[string]any)
		if r, ok := rooms[secret]; ok {
			t.Fatalf("after %s: eve, never in the room, got it in sync: %s", after, mustJSON(t, r))
		}
		r, _ := rooms[other].(map[string]any)
		if r == nil {
			t.Fatalf("after %s: eve's sync lacks her unban from the room she was in: %v", after, rooms)
		}
		events := r["events"].([]any)
		last := events[len(events)-1].(map[string]any)
		if c, _ := last["content"].(map[string]any); last["state_key"] != eveID || c["membership"] != "leave" {
			t.Fatalf("after %s: eve's sync of the room she was in ends with %s, not her unban", after, mustJSON(t, last))
		}
	}
	check("the unban")
	alice.ok(map[string]any{"op": "ban", "room_id": secret, "user_id": eveID})
	check("a ban again")
}
