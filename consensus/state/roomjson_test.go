package state

import (
	"bytes"
	"encoding/json"
	"testing"
)

func checkRoomJSON(t *testing.T, r *Room) {
	t.Helper()
	want, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.AppendJSON([]byte("prefix")); !bytes.Equal(got[len("prefix"):], want) || string(got[:len("prefix")]) != "prefix" {
		t.Fatalf("AppendJSON gives\n%s\njson.Marshal\n%s", got, want)
	}
}

func TestRoomJSONMatchesMarshal(t *testing.T) {
	full := &Room{RoomID: "!r:acme.test", Creator: "@a:acme.test", Visibility: "public", Federate: true,
		Alias: "#x:acme.test", Name: "<General> & \u2028 \xff", Topic: "t\n\"q\"", LastEventID: "$e",
		Depth: 42, FirstPos: -7, Partial: true,
		Power: PowerLevels{Users: map[string]int64{"@b:o": -1, "@a:o": 100, "": 0}, UsersDefault: 1,
			Events: map[string]int64{"m.room.name": 50, "m.room.topic": 0}, EventsDefault: 2, StateDefault: 50,
			Ban: 50, Kick: 49, Redact: 48, Invite: -9223372036854775808}}
	checkRoomJSON(t, full)
	checkRoomJSON(t, &Room{})
	checkRoomJSON(t, &Room{Power: DefaultPowerLevels("@c:acme.test")})
	checkRoomJSON(t, &Room{Power: PowerLevels{Users: map[string]int64{}, Events: map[string]int64{}}})
}

func FuzzRoomJSONMatchesMarshal(f *testing.F) {
	f.Add("!r:acme.test", "@a:acme.test", "public", "#x:acme.test", "General", "", "$e", "@a:o", "m.room.name", int64(3), int64(100), true, false)
	f.Add("", "", "", "", "<b>&\u2028\u2029</b>", "\xff\x00\"\\", "", "", "", int64(-1), int64(0), false, true)
	f.Fuzz(func(t *testing.T, id, creator, vis, alias, name, topic, last, user, evType string, depth, level int64, federate, partial bool) {
		r := &Room{RoomID: id, Creator: creator, Visibility: vis, Federate: federate, Alias: alias, Name: name,
			Topic: topic, LastEventID: last, Depth: depth, FirstPos: level, Partial: partial,
			Power: PowerLevels{UsersDefault: level, EventsDefault: depth, Ban: level, Invite: depth}}
		checkRoomJSON(t, r)
		r.Power.Users = map[string]int64{user: level, user + "x": depth, name: 1}
		r.Power.Events = map[string]int64{evType: depth}
		checkRoomJSON(t, r)
	})
}
