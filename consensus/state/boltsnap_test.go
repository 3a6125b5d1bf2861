package state

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bigBoltFile is a bbolt file whose "events" bucket spans several leaf pages under a branch
// page, and the ids of its root bucket's page and of that branch page.
func bigBoltFile(t *testing.T) (file []byte, pageSize, rootPage, branchPage uint64) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keyAppliedIndex, []byte{0, 0, 0, 0, 0, 0, 0, 5}); err != nil {
			return err
		}
		events, err := tx.CreateBucket(bucketEvents)
		if err != nil {
			return err
		}
		for i := range 300 {
			if err := events.Put(fmt.Appendf(nil, "!r:a\x00%08d", i), bytes.Repeat([]byte{'x'}, 100)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := db.View(func(tx *bolt.Tx) error { _, err := tx.WriteTo(&buf); return err }); err != nil {
		t.Fatal(err)
	}
	file, pageSize = buf.Bytes(), uint64(db.Info().PageSize)
	ne := binary.NativeEndian
	meta := file[boltPageHeader:] // the meta page of the newer transaction
	if m1 := file[pageSize+boltPageHeader:]; ne.Uint64(m1[48:]) > ne.Uint64(meta[48:]) {
		meta = m1
	}
	rootPage = ne.Uint64(meta[16:])
	for id := uint64(2); id < uint64(len(file))/pageSize; id++ {
		if ne.Uint16(file[id*pageSize+8:]) == boltBranchPage {
			branchPage = id
		}
	}
	if branchPage == 0 {
		t.Fatal("no branch page")
	}
	return file, pageSize, rootPage, branchPage
}

// TestRestoreRefusesDamagedBboltFiles: bbolt reads whatever page ids, counts and offsets its
// file holds. Before checkBoltFile, Restore refused none of these damages: a page past the end
// of the file faulted, a fatal error that killed the process (FuzzRestore found it: see
// testdata/fuzz/FuzzRestore), a branch page pointing to itself looped for ever taking memory,
// five more panicked, and the other five were restored as if whole, with data the file does
// not hold (bytes past a page, a page's keys twice, an empty tree).
func TestRestoreRefusesDamagedBboltFiles(t *testing.T) {
	good, pageSize, root, branch := bigBoltFile(t)
	s := Open()
	if err := s.Restore(bytes.NewReader(good)); err != nil || s.AppliedIndex() != 5 {
		t.Fatalf("the undamaged file: %v, applied index %d", err, s.AppliedIndex())
	}
	ne := binary.NativeEndian
	at := func(page, off uint64) uint64 { return page*pageSize + off }
	elem := func(page, i uint64) uint64 { return at(page, boltPageHeader+i*boltElementSize) }
	for _, tc := range []struct {
		name   string
		damage func(b []byte)
	}{
		{"a page past the end of the file", func(b []byte) { ne.PutUint64(b[elem(branch, 0)+8:], 1<<30) }},
		{"a branch page pointing to itself", func(b []byte) { ne.PutUint64(b[elem(branch, 0)+8:], branch) }},
		{"a page reached twice", func(b []byte) { ne.PutUint64(b[elem(branch, 1)+8:], ne.Uint64(b[elem(branch, 0)+8:])) }},
		{"more elements than the page holds", func(b []byte) { ne.PutUint16(b[at(branch, 10):], 0xffff) }},
		{"a branch page without elements", func(b []byte) { ne.PutUint16(b[at(branch, 10):], 0) }},
		{"a page that names another", func(b []byte) { ne.PutUint64(b[at(branch, 0):], branch+1) }},
		{"a page of no known kind", func(b []byte) { ne.PutUint16(b[at(branch, 8):], 0x20) }},
		{"overflow pages past the high-water mark", func(b []byte) { ne.PutUint32(b[at(branch, 12):], 1<<20) }},
		{"a key past its page", func(b []byte) { ne.PutUint32(b[elem(branch, 0)+0:], 0xffffff00) }},
		{"a root entry that is not a bucket", func(b []byte) { ne.PutUint32(b[elem(root, 0):], 0) }},
		{"a bucket value too short for its header", func(b []byte) { ne.PutUint32(b[elem(root, 0)+12:], 3) }},
		{"an empty bucket name", func(b []byte) { ne.PutUint32(b[elem(root, 0)+8:], 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			damaged := bytes.Clone(good)
			tc.damage(damaged)
			done := make(chan error, 1)
			go func() {
				defer func() {
					if p := recover(); p != nil {
						done <- fmt.Errorf("panic: %v", p)
					}
				}()
				done <- s.Restore(bytes.NewReader(damaged))
			}()
			select {
			case err := <-done:
				if err == nil || bytes.HasPrefix([]byte(err.Error()), []byte("panic")) {
					t.Fatalf("restored: %v", err)
				}
				t.Log(err)
			case <-time.After(10 * time.Second):
				t.Fatal("Restore did not return")
			}
			if s.AppliedIndex() != 5 {
				t.Fatalf("applied index %d after a refused restore", s.AppliedIndex())
			}
		})
	}
}

// hugeOverflowBoltFile is good, a bbolt file, made hostile as anyone can: its newer meta page's
// high-water mark raised to 2^40, with the meta page's FNV checksum recomputed, and its root
// bucket's page claiming overflow overflow pages. The file keeps its size (a few dozen KiB).
func hugeOverflowBoltFile(tb testing.TB, good []byte, overflow uint32) []byte {
	tb.Helper()
	b := bytes.Clone(good)
	ne := binary.NativeEndian
	pageSize := uint64(ne.Uint32(b[boltPageHeader+8:]))
	meta := b[boltPageHeader : boltPageHeader+64]
	if m1 := b[pageSize+boltPageHeader : pageSize+boltPageHeader+64]; ne.Uint64(m1[48:]) > ne.Uint64(meta[48:]) {
		meta = m1
	}
	ne.PutUint64(meta[40:], 1<<40)
	h := fnv.New64a()
	_, _ = h.Write(meta[:56])
	ne.PutUint64(meta[56:], h.Sum64())
	root := ne.Uint64(meta[16:])
	if (root+1)*pageSize > uint64(len(b)) {
		tb.Fatalf("root page %d past a file of %d bytes", root, len(b))
	}
	ne.PutUint32(b[root*pageSize+12:], overflow)
	return b
}

// TestRestoreRefusesHugeOverflowCheaply: a page's overflow count was checked only against the
// meta page's high-water mark, which a hostile file sets as it likes (its checksum is FNV, not a
// secret), and every overflow page was marked as seen before the page's bytes were found to lie
// past the end of the file. This file of a few dozen KiB claiming 5,000,000 overflow pages cost
// the old check about 288 MiB before it refused; at 2^32-1 the process was killed for memory.
// Now the page and its overflow must lie within the file first.
func TestRestoreRefusesHugeOverflowCheaply(t *testing.T) {
	good, _, _, _ := bigBoltFile(t)
	hostile := hugeOverflowBoltFile(t, good, 5_000_000)
	s := Open()
	if err := s.Restore(bytes.NewReader(good)); err != nil || s.AppliedIndex() != 5 {
		t.Fatalf("the undamaged file: %v, applied index %d", err, s.AppliedIndex())
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	err := s.Restore(bytes.NewReader(hostile))
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("restored a file whose page claims 5,000,000 overflow pages")
	}
	if !strings.Contains(err.Error(), "overflow") {
		t.Errorf("refused, but not for its overflow pages: %v", err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("refused in %v having allocated %d KiB: %v", elapsed, alloc>>10, err)
	if alloc > 16<<20 {
		t.Fatalf("refusing a %d KiB file allocated %d MiB", len(hostile)>>10, alloc>>20)
	}
	if s.AppliedIndex() != 5 {
		t.Fatalf("applied index %d after a refused restore", s.AppliedIndex())
	}
}
