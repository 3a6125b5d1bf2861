package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parley-chat/parley/consensus/event"

	bolt "go.etcd.io/bbolt"
)

// A snapshot taken by an older version is a bbolt database file: restoring it must give the
// same state as the current format does.
func TestRestoreConvertsABboltSnapshot(t *testing.T) {
	old, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	room, _ := json.Marshal(Room{RoomID: "!r:acme.test", Name: "plans", Depth: 7})
	member, _ := json.Marshal(Member{Membership: Join, Pos: 3})
	err = old.Update(func(tx *bolt.Tx) error {
		for _, b := range []struct{ bucket, key, value []byte }{
			{bucketMeta, keyAppliedIndex, []byte{0, 0, 0, 0, 0, 0, 0, 42}},
			{bucketMeta, keyStreamPos, []byte{0, 0, 0, 0, 0, 0, 0, 9}},
			{bucketRooms, []byte("!r:acme.test"), room},
			{bucketMembers, key2("!r:acme.test", "@amy:acme.test"), member},
			{bucketUserRooms, key2("@amy:acme.test", "!r:acme.test"), nil},
		} {
			bk, err := tx.CreateBucketIfNotExists(b.bucket)
			if err != nil {
				return err
			}
			if err := bk.Put(b.key, b.value); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	if err := old.View(func(tx *bolt.Tx) error { _, err := tx.WriteTo(&file); return err }); err != nil {
		t.Fatal(err)
	}
	s := Open()
	if err := s.Restore(&file); err != nil {
		t.Fatal(err)
	}
	if got := s.AppliedIndex(); got != 42 {
		t.Fatalf("applied index %d, want 42", got)
	}
	if got := s.StreamPos(); got != 9 {
		t.Fatalf("stream position %d, want 9", got)
	}
	if r, ok := s.Room("!r:acme.test"); !ok || r.Name != "plans" || r.Depth != 7 {
		t.Fatalf("room: %+v %v", r, ok)
	}
	if got := s.members.get("!r:acme.test"); len(got) != 1 || got[0] != "@amy:acme.test" {
		t.Fatalf("joined members: %v", got)
	}
	// And it snapshots in the current format, which restores to the same state.
	var snap bytes.Buffer
	if err := s.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	s2 := Open()
	if err := s2.Restore(&snap); err != nil {
		t.Fatal(err)
	}
	if s2.AppliedIndex() != 42 || len(s2.members.get("!r:acme.test")) != 1 {
		t.Fatal("the re-snapshot lost state")
	}
}

// A damaged snapshot is refused and the state is left as it was.
func TestRestoreRefusesADamagedSnapshotAndKeepsTheState(t *testing.T) {
	s := Open()
	f := &fsmT{t: t, s: s}
	f.apply(&Command{Kind: KindRegister, Register: &Register{UserID: "@amy:acme.test", PasswordHash: []byte("x"), TokenHash: "t"}})
	var snap bytes.Buffer
	if err := s.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	damaged := snap.Bytes()[:snap.Len()-3]
	for name, in := range map[string][]byte{"truncated": damaged, "garbage": []byte("not a snapshot at all, no"),
		"bbolt-looking garbage": append(make([]byte, 16), 0xED, 0xDA, 0x0C, 0xED, 1, 2, 3)} {
		if err := s.Restore(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: restored", name)
		}
		if s.AppliedIndex() != 1 {
			t.Fatalf("%s: applied index %d after a refused restore", name, s.AppliedIndex())
		}
	}
}

// TestDeliveriesCarryEachEventsOwnJSON: the applier encodes events into one reused buffer, so
// each delivery of a batch must hold its own event's stored JSON, not the buffer's last
// contents, and keep it after later batches.
func TestDeliveriesCarryEachEventsOwnJSON(t *testing.T) {
	s := Open()
	defer s.Close()
	const alice = "@alice:acme.test"
	room := &chain{t: t, room: "!r:acme.test"}
	create := []*event.Event{
		room.next(alice, "m.room.create", sk(""), CreateContent{Creator: alice, Visibility: "public"}),
		room.next(alice, "m.room.member", sk(alice), map[string]string{"membership": Join}),
	}
	var cmds []*Command
	for i := 0; i < 5; i++ {
		e := room.next(alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": strings.Repeat("x", 10*i)})
		cmds = append(cmds, &Command{Kind: KindEvent, Event: &EventCommand{Event: e, TxnID: fmt.Sprintf("t%d", i)}})
	}
	_, applied, err := s.ApplyEntries([]Entry{
		{Index: 1, Batch: &Batch{Commands: []*Command{{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: room.room, Events: create}}}}},
		{Index: 2, Batch: &Batch{Commands: cmds}},
	})
	if err != nil {
		t.Fatal(err)
	}
	more := room.next(alice, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "later"})
	if _, _, err := s.ApplyEntries([]Entry{{Index: 3, Batch: &Batch{Commands: []*Command{{Kind: KindEvent, Event: &EventCommand{Event: more}}}}}}); err != nil {
		t.Fatal(err)
	}
	if len(applied.Events) != 7 {
		t.Fatalf("%d deliveries, want 7", len(applied.Events))
	}
	for _, d := range applied.Events {
		want, err := d.Event.AppendJSON(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(d.JSON, want) {
			t.Fatalf("delivery of %s holds\n%s\nwant\n%s", d.Event.EventID, d.JSON, want)
		}
		stored, ok := s.Event(d.Event.EventID)
		if !ok || stored.StreamPos != d.Event.StreamPos {
			t.Fatalf("event %s not stored at %d", d.Event.EventID, d.Event.StreamPos)
		}
	}
}
