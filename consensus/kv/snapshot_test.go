package kv

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func sample(t testing.TB) *DB {
	db := New()
	err := db.Update(func(tx *Tx) error {
		for i := 0; i < 500; i++ {
			if err := tx.Bucket([]byte("events")).Put([]byte(fmt.Sprintf("e%05d", i)), bytes.Repeat([]byte{byte(i)}, i%70)); err != nil {
				return err
			}
		}
		if err := tx.Bucket([]byte("meta")).Put([]byte("applied_index"), []byte{0, 0, 0, 0, 0, 0, 0, 9}); err != nil {
			return err
		}
		return tx.Bucket([]byte("empty value")).Put([]byte("k"), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func snapshot(t testing.TB, db *DB) []byte {
	var buf bytes.Buffer
	n, err := db.Begin().WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo reported %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

func dump(db *DB) string {
	var out bytes.Buffer
	tx := db.Begin()
	for _, name := range tx.bucketNames() {
		_ = tx.Bucket([]byte(name)).ForEach(func(k, v []byte) error {
			fmt.Fprintf(&out, "%s/%x=%x\n", name, k, v)
			return nil
		})
	}
	return out.String()
}

func TestSnapshotRoundTrip(t *testing.T) {
	db := sample(t)
	raw := snapshot(t, db)
	back, err := Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if dump(back) != dump(db) {
		t.Fatal("the restored store differs from the original")
	}
	if again := snapshot(t, back); !bytes.Equal(again, raw) {
		t.Fatal("a restored store must write the same snapshot bytes")
	}
	// The restored store takes writes like any other.
	put(t, back, "new", "1")
	if v := get(back, "new"); string(v) != "1" {
		t.Fatalf("write after restore: %q", v)
	}
}

// Whatever one committed log entry can write reads back: a key of 100 KiB (beyond the 64 KiB
// the reader once allowed) and a value of 1 MiB.
func TestSnapshotHoldsLargeKeysAndValues(t *testing.T) {
	db := sample(t)
	key, value := strings.Repeat("k", 100<<10), strings.Repeat("v", 1<<20)
	put(t, db, key, value)
	back, err := Read(bytes.NewReader(snapshot(t, db)))
	if err != nil {
		t.Fatal(err)
	}
	if string(get(back, key)) != value {
		t.Fatal("the large key's value did not read back")
	}
	if dump(back) != dump(db) {
		t.Fatal("the restored store differs from the original")
	}
}

func TestSnapshotOfAnEmptyStore(t *testing.T) {
	back, err := Read(bytes.NewReader(snapshot(t, New())))
	if err != nil {
		t.Fatal(err)
	}
	if dump(back) != "" {
		t.Fatalf("restored empty store holds %q", dump(back))
	}
}

func TestSnapshotIsAPointInTime(t *testing.T) {
	db := sample(t)
	pinned := db.Begin()
	put(t, db, "later", "x")
	var buf bytes.Buffer
	if _, err := pinned.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if v := get(back, "later"); v != nil {
		t.Fatal("a snapshot holds a write made after it was pinned")
	}
}

func TestReadRefusesDamagedSnapshots(t *testing.T) {
	raw := snapshot(t, sample(t))
	cases := map[string][]byte{
		"empty":          nil,
		"not a snapshot": []byte("SQLite format 3\x00"),
		"truncated":      raw[:len(raw)/2],
		"no end record":  raw[:len(raw)-5],
		"trailing bytes": append(append([]byte{}, raw...), 0),
	}
	for _, at := range []int{len(Magic) + 3, len(raw) / 3, len(raw) - 10, len(raw) - 1} {
		flipped := append([]byte{}, raw...)
		flipped[at] ^= 0x20
		cases[fmt.Sprintf("byte %d flipped", at)] = flipped
	}
	for name, in := range cases {
		if db, err := Read(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: accepted (%d buckets)", name, len(db.Begin().bucketNames()))
		}
	}
}

// FuzzRead feeds damaged and hostile snapshots to Read: it must return an error or a store
// whose own snapshot reads back to the same contents, and never panic or allocate wildly.
func FuzzRead(f *testing.F) {
	small := New()
	err := small.Update(func(tx *Tx) error {
		_ = tx.Bucket([]byte("meta")).Put([]byte("applied_index"), []byte{0, 0, 0, 0, 0, 0, 0, 9})
		_ = tx.Bucket([]byte("events")).Put([]byte("room\x00\x01"), []byte(`{"type":"m.room.message"}`))
		return tx.Bucket([]byte("events")).Put([]byte("room\x00\x02"), nil)
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(snapshot(f, small))
	f.Add(snapshot(f, New()))
	f.Add([]byte(Magic + "B\x01a\x02\x01k\x00\x01j\x00E\x00\x00\x00\x00"))
	f.Add([]byte(Magic + "B\x01a\xff\xff\xff\xff\x0f"))
	f.Fuzz(func(t *testing.T, in []byte) {
		db, err := Read(bytes.NewReader(in))
		if err != nil {
			return
		}
		back, err := Read(bytes.NewReader(snapshot(t, db)))
		if err != nil {
			t.Fatalf("the snapshot of an accepted snapshot is refused: %v", err)
		}
		if dump(back) != dump(db) {
			t.Fatal("round trip changed the contents")
		}
	})
}
