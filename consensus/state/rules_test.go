package state

import (
	"encoding/json"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// TestPowerChangeFollowsMatrixRules: a power-levels change is refused when it touches a level
// (a user's, an action's, an event type's) that is or would become above the sender's own, as
// Matrix's auth rules say; a change within the sender's reach is allowed.
func TestPowerChangeFollowsMatrixRules(t *testing.T) {
	const admin, mod, user = "@admin:acme.test", "@mod:acme.test", "@user:acme.test"
	old := PowerLevels{Users: map[string]int64{admin: 100, mod: 50}, StateDefault: 50, Ban: 100, Kick: 50,
		Redact: 50, Events: map[string]int64{"m.room.power_levels": 100, "m.room.name": 50}}
	with := func(change func(p *PowerLevels)) PowerLevels {
		next := old
		next.Users = map[string]int64{admin: 100, mod: 50}
		next.Events = map[string]int64{"m.room.power_levels": 100, "m.room.name": 50}
		change(&next)
		return next
	}
	cases := []struct {
		name    string
		sender  string
		next    PowerLevels
		allowed bool
	}{
		{"unchanged", mod, with(func(*PowerLevels) {}), true},
		{"a threshold within reach", mod, with(func(p *PowerLevels) { p.Kick = 25 }), true},
		{"a user below the sender, up to the sender's level", mod, with(func(p *PowerLevels) { p.Users[user] = 50 }), true},
		{"an event type within reach", mod, with(func(p *PowerLevels) { p.Events["m.room.topic"] = 50 }), true},
		{"the admin may do it all", admin, with(func(p *PowerLevels) { p.Ban = 0; p.Events["m.room.power_levels"] = 50 }), true},

		{"lower a threshold set above the sender", mod, with(func(p *PowerLevels) { p.Ban = 0 }), false},
		{"raise a threshold above the sender", mod, with(func(p *PowerLevels) { p.Kick = 51 }), false},
		{"raise an event type out of everyone's reach", mod, with(func(p *PowerLevels) { p.Events["m.room.power_levels"] = 101 }), false},
		{"silence the room", mod, with(func(p *PowerLevels) { p.Events["m.room.message"] = 1000 }), false},
		{"lower an event type set above the sender", mod, with(func(p *PowerLevels) { p.Events["m.room.power_levels"] = 50 }), false},
		{"drop an event type set above the sender", mod, with(func(p *PowerLevels) { delete(p.Events, "m.room.power_levels") }), false},
		{"users_default above the sender", mod, with(func(p *PowerLevels) { p.UsersDefault = 60 }), false},
		{"grant more than the sender has", mod, with(func(p *PowerLevels) { p.Users[user] = 60 }), false},
		{"demote the admin", mod, with(func(p *PowerLevels) { p.Users[admin] = 0 }), false},
		{"drop the admin", mod, with(func(p *PowerLevels) { delete(p.Users, admin) }), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			content, err := json.Marshal(c.next)
			if err != nil {
				t.Fatal(err)
			}
			e := &event.Event{Sender: c.sender, Type: "m.room.power_levels", Content: content}
			r := authorizePowerChange(old, e, old.UserLevel(c.sender))
			if r.OK() != c.allowed {
				t.Fatalf("allowed %v, want %v (%s)", r.OK(), c.allowed, r.Message)
			}
			if !c.allowed && r.Code != CodeForbidden {
				t.Fatalf("refused with %s, want %s", r.Code, CodeForbidden)
			}
		})
	}
}
