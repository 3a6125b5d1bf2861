package kv

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"testing"
	"time"
)

var bucket = []byte("b")

func put(t *testing.T, db *DB, pairs ...string) {
	t.Helper()
	err := db.Update(func(tx *Tx) error {
		for i := 0; i < len(pairs); i += 2 {
			if err := tx.Bucket(bucket).Put([]byte(pairs[i]), []byte(pairs[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func get(db *DB, key string) []byte {
	var v []byte
	_ = db.View(func(tx *Tx) error { v = tx.Bucket(bucket).Get([]byte(key)); return nil })
	return v
}

func TestPutGetDelete(t *testing.T) {
	db := New()
	if v := get(db, "a"); v != nil {
		t.Fatalf("empty store: %q", v)
	}
	put(t, db, "a", "1", "empty", "")
	if v := get(db, "a"); string(v) != "1" {
		t.Fatalf("a = %q", v)
	}
	if v := get(db, "empty"); v == nil || len(v) != 0 {
		t.Fatalf("an empty value must be a non-nil empty slice, got %#v", v)
	}
	put(t, db, "a", "2")
	if v := get(db, "a"); string(v) != "2" {
		t.Fatalf("replaced a = %q", v)
	}
	if err := db.Update(func(tx *Tx) error { return tx.Bucket(bucket).Delete([]byte("a")) }); err != nil {
		t.Fatal(err)
	}
	if v := get(db, "a"); v != nil {
		t.Fatalf("deleted a = %q", v)
	}
	err := db.Update(func(tx *Tx) error { return tx.Bucket(bucket).Put(nil, []byte("x")) })
	if !errors.Is(err, ErrKeyRequired) {
		t.Fatalf("empty key: %v", err)
	}
}

func TestPutCopiesItsArguments(t *testing.T) {
	db := New()
	k, v := []byte("key"), []byte("value")
	if err := db.Update(func(tx *Tx) error { return tx.Bucket(bucket).Put(k, v) }); err != nil {
		t.Fatal(err)
	}
	k[0], v[0] = 'X', 'X'
	if got := get(db, "key"); string(got) != "value" {
		t.Fatalf("got %q after changing the caller's slices", got)
	}
	got := get(db, "key")
	if cap(got) != len(got) {
		t.Fatalf("a value must not be appendable into its neighbour: cap %d len %d", cap(got), len(got))
	}
}

func TestReadersSeeTheVersionTheyBegan(t *testing.T) {
	db := New()
	put(t, db, "a", "1")
	before := db.Begin()
	put(t, db, "a", "2", "b", "1")
	if v := before.Bucket(bucket).Get([]byte("a")); string(v) != "1" {
		t.Fatalf("old reader sees a = %q", v)
	}
	if v := before.Bucket(bucket).Get([]byte("b")); v != nil {
		t.Fatalf("old reader sees b = %q", v)
	}
	if n := before.Bucket(bucket).Len(); n != 1 {
		t.Fatalf("old reader sees %d keys", n)
	}
	if v := get(db, "a"); string(v) != "2" {
		t.Fatalf("new reader sees a = %q", v)
	}
}

func TestFailedUpdateChangesNothing(t *testing.T) {
	db := New()
	put(t, db, "a", "1")
	boom := errors.New("boom")
	err := db.Update(func(tx *Tx) error {
		_ = tx.Bucket(bucket).Put([]byte("a"), []byte("2"))
		_ = tx.Bucket(bucket).Put([]byte("b"), []byte("2"))
		_ = tx.Bucket([]byte("other")).Put([]byte("c"), []byte("2"))
		if v := tx.Bucket(bucket).Get([]byte("a")); string(v) != "2" {
			t.Errorf("the transaction must see its own write, got %q", v)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if v := get(db, "a"); string(v) != "1" {
		t.Fatalf("a = %q after a failed update", v)
	}
	if v := get(db, "b"); v != nil {
		t.Fatalf("b = %q after a failed update", v)
	}
	// The writer's own copy must be untouched too: the next update builds on it.
	put(t, db, "c", "3")
	if v := get(db, "b"); v != nil {
		t.Fatalf("b = %q reappeared", v)
	}
	func() {
		defer func() { _ = recover() }()
		_ = db.Update(func(tx *Tx) error {
			_ = tx.Bucket(bucket).Put([]byte("a"), []byte("panic"))
			panic("in the middle")
		})
	}()
	if v := get(db, "a"); string(v) != "1" {
		t.Fatalf("a = %q after a panicking update", v)
	}
}

func TestReadOnlyTransactionsRefuseWrites(t *testing.T) {
	db := New()
	err := db.View(func(tx *Tx) error { return tx.Bucket(bucket).Put([]byte("a"), nil) })
	if !errors.Is(err, ErrTxNotWritable) {
		t.Fatalf("Put: %v", err)
	}
	if err := db.Begin().Bucket(bucket).Delete([]byte("a")); !errors.Is(err, ErrTxNotWritable) {
		t.Fatalf("Delete: %v", err)
	}
	var kept *Tx
	put(t, db, "a", "1")
	_ = db.Update(func(tx *Tx) error { kept = tx; return nil })
	if err := kept.Bucket(bucket).Put([]byte("b"), nil); !errors.Is(err, ErrTxDone) {
		t.Fatalf("Put after Update returned: %v", err)
	}
}

// keysOf is the model's keys sorted: the reference the cursor is checked against.
func keysOf(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func TestCursorMatchesASortedList(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	db := New()
	model := map[string]string{}
	for round := 0; round < 20; round++ {
		_ = db.Update(func(tx *Tx) error {
			for i := 0; i < 50; i++ {
				k := fmt.Sprintf("k%04d", rng.Intn(400))
				if rng.Intn(4) == 0 {
					delete(model, k)
					if err := tx.Bucket(bucket).Delete([]byte(k)); err != nil {
						return err
					}
					continue
				}
				model[k] = fmt.Sprint(round, i)
				if err := tx.Bucket(bucket).Put([]byte(k), []byte(model[k])); err != nil {
					return err
				}
			}
			return nil
		})
		keys := keysOf(model)
		c := db.Begin().Bucket(bucket).Cursor()
		// Forward from the start, backward from the end.
		var got []string
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if string(v) != model[string(k)] {
				t.Fatalf("value of %s: %q, want %q", k, v, model[string(k)])
			}
			got = append(got, string(k))
		}
		if fmt.Sprint(got) != fmt.Sprint(keys) {
			t.Fatalf("forward walk:\n got %v\nwant %v", got, keys)
		}
		got = got[:0]
		for k, _ := c.Last(); k != nil; k, _ = c.Prev() {
			got = append(got, string(k))
		}
		for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
			got[i], got[j] = got[j], got[i]
		}
		if fmt.Sprint(got) != fmt.Sprint(keys) {
			t.Fatalf("backward walk:\n got %v\nwant %v", got, keys)
		}
		// Seek, then a random mix of steps both ways.
		seek := fmt.Sprintf("k%04d", rng.Intn(420))
		at := sort.SearchStrings(keys, seek)
		k, _ := c.Seek([]byte(seek))
		for step := 0; step < 100; step++ {
			var want []byte
			if at >= 0 && at < len(keys) {
				want = []byte(keys[at])
			}
			if !bytes.Equal(k, want) {
				t.Fatalf("round %d step %d after seek %s: at %q, want %q", round, step, seek, k, want)
			}
			if k == nil {
				break
			}
			if rng.Intn(3) == 0 {
				k, _ = c.Prev()
				at--
			} else {
				k, _ = c.Next()
				at++
			}
		}
	}
}

func TestCursorOnAnEmptyBucket(t *testing.T) {
	c := New().Begin().Bucket(bucket).Cursor()
	for name, step := range map[string]func() ([]byte, []byte){"First": c.First, "Last": c.Last,
		"Next": c.Next, "Prev": c.Prev, "Seek": func() ([]byte, []byte) { return c.Seek([]byte("a")) }} {
		if k, v := step(); k != nil || v != nil {
			t.Fatalf("%s on an empty bucket: %q %q", name, k, v)
		}
	}
}

func TestConcurrentReadersAndOneWriter(t *testing.T) {
	db := New()
	put(t, db, "n", "0")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Each version holds keys 0..n-1 and "n" = n: a reader must never see a mix.
				_ = db.View(func(tx *Tx) error {
					b := tx.Bucket(bucket)
					var n int
					fmt.Sscan(string(b.Get([]byte("n"))), &n)
					if got := b.Len() - 1; got != n {
						t.Errorf("version with n=%d holds %d keys", n, got)
					}
					return nil
				})
			}
		}()
	}
	for i := 0; i < 300; i++ {
		put(t, db, fmt.Sprintf("k%05d", i), "x", "n", fmt.Sprint(i+1))
	}
	close(stop)
	wg.Wait()
}

// TestKeysOrderAsBytes: keys sharing long prefixes, of every length around the 8 bytes an entry
// keeps inline, with zero and 0xff bytes, sort exactly as bytes.Compare sorts them, through
// puts, deletes, gets and cursor walks.
func TestKeysOrderAsBytes(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	alphabet := []byte{0, 1, 'a', 0xfe, 0xff}
	key := func() []byte {
		k := make([]byte, 1+rng.Intn(14))
		for i := range k {
			k[i] = alphabet[rng.Intn(len(alphabet))]
		}
		return k
	}
	db := New()
	model := map[string]string{}
	for round := 0; round < 30; round++ {
		if err := db.Update(func(tx *Tx) error {
			for i := 0; i < 40; i++ {
				k := key()
				if rng.Intn(5) == 0 {
					delete(model, string(k))
					if err := tx.Bucket(bucket).Delete(k); err != nil {
						return err
					}
					continue
				}
				v := fmt.Sprint(round, "/", i)
				model[string(k)] = v
				if err := tx.Bucket(bucket).Put(k, []byte(v)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		want := keysOf(model)
		var got []string
		c := db.Begin().Bucket(bucket).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if string(v) != model[string(k)] {
				t.Fatalf("value of %q: %q, want %q", k, v, model[string(k)])
			}
			got = append(got, string(k))
		}
		if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
			t.Fatalf("round %d: walk\n got %q\nwant %q", round, got, want)
		}
		for i := 0; i < 20; i++ {
			k := key()
			if v, ok := model[string(k)]; string(get(db, string(k))) != v || (!ok && get(db, string(k)) != nil) {
				t.Fatalf("get %q: %q, want %q", k, get(db, string(k)), v)
			}
		}
	}
}

// FuzzKeyOrder: the inline key head never changes the order of two keys.
func FuzzKeyOrder(f *testing.F) {
	f.Add([]byte("!room:a\x00\x00\x00\x00\x00\x00\x00\x01"), []byte("!room:a\x00\x00\x00\x00\x00\x00\x00\x02"))
	f.Add([]byte("ab"), []byte("ab\x00"))
	f.Add([]byte("ba"), []byte("ab"))
	f.Add([]byte("azzzzzzz"), []byte("bazzzzzz"))
	f.Add([]byte("abcdefgh"), []byte("abcdefg"))
	f.Add([]byte{}, []byte{0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0}, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		want := bytes.Compare(a, b) < 0
		if got := less(probe(a), probe(b)); got != want {
			t.Fatalf("less(%q, %q) = %v, want %v", a, b, got, want)
		}
		if got := less(newEntry(append(a[:len(a):len(a)], 'v'), len(a)), probe(b)); got != want {
			t.Fatalf("less of a stored %q and %q = %v, want %v", a, b, got, want)
		}
	})
}

// TestRewrittenKeysLeaveTheArenaAlone: a key written over and over (a room record, a cursor)
// gets allocations of its own that the garbage collector frees; it must not fill arena blocks,
// which live as long as any entry in them. Readers keep the values they saw.
func TestRewrittenKeysLeaveTheArenaAlone(t *testing.T) {
	db := New()
	put(t, db, "fresh", "x")
	used := len(db.arena.cur)
	old := db.Begin()
	value := bytes.Repeat([]byte("v"), 1000)
	for i := 0; i < 200; i++ {
		value[0] = byte('a' + i%26)
		put(t, db, "room", string(value))
	}
	if grew := len(db.arena.cur) - used; grew > len("room")+len(value) {
		t.Fatalf("200 rewrites of one key used %d arena bytes, want at most its first write", grew)
	}
	if got := get(db, "room"); got[0] != value[0] || len(got) != len(value) {
		t.Fatalf("room = %.10q…, want %.10q…", got, value)
	}
	if v := old.Bucket(bucket).Get([]byte("room")); v != nil {
		t.Fatalf("a reader that began before sees %q", v)
	}
	if v := get(db, "fresh"); string(v) != "x" {
		t.Fatalf("fresh = %q", v)
	}
}

// TestSizeCountsKeysAndBytes: puts, rewrites, deletes, a failed update and a snapshot's
// restore each leave Size matching what the store holds.
func TestSizeCountsKeysAndBytes(t *testing.T) {
	db := New()
	check := func(db *DB, keys, bytes int64) {
		t.Helper()
		if got := db.Size(); got != (Size{Keys: keys, Bytes: bytes}) {
			t.Fatalf("size %+v, want %d keys and %d bytes", got, keys, bytes)
		}
	}
	check(db, 0, 0)
	put(t, db, "a", "1", "bb", "22")
	check(db, 2, 6)
	old := db.Begin()
	put(t, db, "a", "1111")                                                                       // rewritten: 3 bytes more
	_ = db.Update(func(tx *Tx) error { return tx.Bucket([]byte("other")).Put([]byte("c"), nil) }) // another bucket
	check(db, 3, 10)
	if err := db.Update(func(tx *Tx) error {
		_ = tx.Bucket(bucket).Delete([]byte("bb"))
		_ = tx.Bucket(bucket).Delete([]byte("absent"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check(db, 2, 6)
	_ = db.Update(func(tx *Tx) error {
		_ = tx.Bucket(bucket).Put([]byte("lost"), []byte("x"))
		return errors.New("rolled back")
	})
	check(db, 2, 6)
	if s := old.version.size; s != (Size{Keys: 2, Bytes: 6}) {
		t.Fatalf("an older version's size changed to %+v", s)
	}
	var snap bytes.Buffer
	if _, err := db.Begin().WriteTo(&snap); err != nil {
		t.Fatal(err)
	}
	restored, err := Read(&snap)
	if err != nil {
		t.Fatal(err)
	}
	check(restored, 2, 6)
}

// contents is every bucket and key of tx, as "bucket/key=value" lines in order.
func contents(tx *Tx) []string {
	var out []string
	for _, name := range tx.bucketNames() {
		_ = tx.Bucket([]byte(name)).ForEach(func(k, v []byte) error {
			out = append(out, fmt.Sprintf("%s/%x=%x", name, k, v))
			return nil
		})
	}
	return out
}

// TestRollbackRestoresTheWriterExactly: the writer changes its trees in place, so a failed or
// panicking update must undo every put, rewrite and delete, in any order, repeated keys
// included, and drop buckets it made; readers that began before see their version throughout.
func TestRollbackRestoresTheWriterExactly(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	db := New()
	key := func() []byte { return []byte(fmt.Sprintf("k%03d", rng.Intn(400))) }
	for round := 0; round < 60; round++ {
		fail := round%3 != 0
		var reader *Tx
		if round%2 == 0 {
			reader = db.Begin()
		}
		before := contents(db.Begin())
		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("panic: %v", p)
				}
			}()
			return db.Update(func(tx *Tx) error {
				for i := 0; i < 1+rng.Intn(200); i++ {
					b := tx.Bucket([]byte(fmt.Sprintf("b%d", rng.Intn(3+round/10))))
					switch rng.Intn(4) {
					case 0:
						_ = b.Delete(key())
					case 1:
						k, v := key(), bytes.Repeat([]byte{byte(rng.Intn(256))}, rng.Intn(40))
						had := b.Get(k)
						got, err := b.Insert(k, v)
						if err != nil || !bytes.Equal(got, had) || (got == nil) != (had == nil) {
							t.Fatalf("round %d: Insert(%s) found %q (%v), Get %q", round, k, got, err, had)
						}
						if now := b.Get(k); (had == nil && !bytes.Equal(now, v)) || (had != nil && !bytes.Equal(now, had)) {
							t.Fatalf("round %d: after Insert(%s) the value is %q", round, k, now)
						}
					default:
						_ = b.Put(key(), bytes.Repeat([]byte{byte(rng.Intn(256))}, rng.Intn(40)))
					}
				}
				switch {
				case !fail:
					return nil
				case round%2 == 1:
					panic("in the middle")
				default:
					return errors.New("refused")
				}
			})
		}()
		after := contents(db.Begin())
		if !fail && err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if fail {
			if err == nil {
				t.Fatalf("round %d: the update did not fail", round)
			}
			if fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("round %d: a failed update left changes:\n before %d entries\n after  %d entries", round, len(before), len(after))
			}
		}
		if n := int64(len(after)); db.Size().Keys != n {
			t.Fatalf("round %d: size says %d keys, the store holds %d", round, db.Size().Keys, n)
		}
		if reader != nil {
			if got := contents(reader); fmt.Sprint(got) != fmt.Sprint(before) {
				t.Fatalf("round %d: a reader's version changed under it", round)
			}
		}
	}
}

// TestReadersWaitForAWriteInProgress: a reader that begins during a write transaction while
// an earlier commit is unpublished waits for the write to end and sees the state after it,
// never a tree half-way through a change; BeginPublished does not wait and shows the newest
// published state.
func TestReadersWaitForAWriteInProgress(t *testing.T) {
	db := New()
	put(t, db, "a", "1")
	get(db, "a") // published
	put(t, db, "a", "2")
	got := make(chan string, 1)
	stale := make(chan string, 1)
	err := db.Update(func(tx *Tx) error {
		_ = tx.Bucket(bucket).Put([]byte("a"), []byte("3"))
		go func() { got <- string(get(db, "a")) }()
		go func() { stale <- string(db.BeginPublished().Bucket(bucket).Get([]byte("a"))) }()
		if v := <-stale; v != "1" {
			t.Errorf("BeginPublished during the write saw a = %q, want the published 1", v)
		}
		time.Sleep(20 * time.Millisecond) // time for the reader to get as far as it can
		select {
		case v := <-got:
			t.Errorf("a reader did not wait for the write in progress (saw a = %q)", v)
			got <- v
		default:
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v := <-got; v != "3" {
		t.Fatalf("the waiting reader saw a = %q, want 3", v)
	}
}

// TestPublishingOnlyWhenAsked: commits with no reader between them are published together when
// a reader comes, and BeginPublished shows only what a reader caused to be published.
func TestPublishingOnlyWhenAsked(t *testing.T) {
	db := New()
	put(t, db, "a", "1")
	if v := db.BeginPublished().Bucket(bucket).Get([]byte("a")); v != nil {
		t.Fatalf("published before any reader: a = %q", v)
	}
	put(t, db, "a", "2")
	if v := get(db, "a"); string(v) != "2" {
		t.Fatalf("a = %q", v)
	}
	if v := db.BeginPublished().Bucket(bucket).Get([]byte("a")); string(v) != "2" {
		t.Fatalf("after a reader, published a = %q", v)
	}
}

// TestWritesWithoutReadersCopyNothing: with no reader between them, updates change the
// writer's nodes in place; a reader between updates makes the next one copy the nodes it
// changes (its path from the root), so it allocates more.
func TestWritesWithoutReadersCopyNothing(t *testing.T) {
	db := New()
	for i := 0; i < 20000; i += 1000 {
		_ = db.Update(func(tx *Tx) error {
			for j := i; j < i+1000; j++ {
				_ = tx.Bucket(bucket).Put([]byte(fmt.Sprintf("k%08d", j*7919%20000)), []byte("v"))
			}
			return nil
		})
	}
	n := 0
	rewrite := func() {
		n++
		_ = db.Update(func(tx *Tx) error {
			return tx.Bucket(bucket).Delete([]byte(fmt.Sprintf("k%08d", n*7919%20000)))
		})
	}
	alone := testing.AllocsPerRun(200, rewrite)
	withReaders := testing.AllocsPerRun(200, func() { db.Begin(); rewrite() })
	if alone+3 > withReaders {
		t.Fatalf("an update allocates %.1f times alone and %.1f times after a reader: want the copies only after a reader", alone, withReaders)
	}
	t.Logf("allocations per update: %.1f alone, %.1f after a reader", alone, withReaders)
}

// TestPutValueSharesTheStoredCopy: PutValue returns the store's own copy, which a later write of
// the caller's buffer, a rewrite of the key and a failed update all leave as it was.
func TestPutValueSharesTheStoredCopy(t *testing.T) {
	db := New()
	buf := []byte("first value")
	var stored []byte
	if err := db.Update(func(tx *Tx) error {
		var err error
		stored, err = tx.Bucket(bucket).PutValue([]byte("k"), buf)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXX")
	put(t, db, "k", "second")
	_ = db.Update(func(tx *Tx) error {
		_ = tx.Bucket(bucket).Put([]byte("k"), []byte("lost"))
		return errors.New("rolled back")
	})
	if string(stored) != "first value" || cap(stored) != len(stored) {
		t.Fatalf("the stored copy is %q (cap %d)", stored, cap(stored))
	}
	if v := get(db, "k"); string(v) != "second" {
		t.Fatalf("k = %q", v)
	}
	var again []byte
	_ = db.Update(func(tx *Tx) error {
		again, _ = tx.Bucket(bucket).PutValue([]byte("k"), []byte("third")) // a rewrite: its own allocation
		return nil
	})
	if string(again) != "third" || cap(again) != len(again) {
		t.Fatalf("a rewrite's stored copy is %q (cap %d)", again, cap(again))
	}
}
