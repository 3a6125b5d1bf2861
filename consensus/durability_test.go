package consensus

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// What must reach the disk, and in which order, for a node to keep every entry it acknowledged
// through a crash. A test cannot cut the power, so these record the syncs (the syncs are the
// only thing a power cut respects) and check they are there, and where they must be.

// A node killed after writing to its tail segment without syncing (appends not yet synced, or
// a segment made or renamed from the spare just before: its name was never synced either)
// restarts and reads that segment back: raft-wal recovers what it finds, and Raft counts it
// stored (a follower acknowledges an entry it already holds without storing it again). So the
// segment's data and name are synced before raft-wal reads it. Before, a restarted node
// synced neither, ever: an append's fdatasync on a zeroed segment commits no directory
// change, and the segment file was marked as having had its directory synced.
func TestARestartSyncsTheTailSegmentItReadsBack(t *testing.T) {
	dir := t.TempDir()
	first, err := newSegmentFS(dir, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	seg, err := first.Create(dir, "00001.wal", testSegmentSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seg.WriteAt([]byte("an append never synced"), 0); err != nil {
		t.Fatal(err)
	}
	// The process dies here: no Sync.
	seg.Close()
	first.Close()

	again, err := newSegmentFS(dir, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	var syncs []string
	again.syncData = func(f *os.File, raw bool) error {
		syncs = append(syncs, "data "+filepath.Base(f.Name()))
		return dataSync(f, raw)
	}
	again.syncDir = func(d string) error {
		if d != dir {
			return fmt.Errorf("synced %s, not the segment's directory %s", d, dir)
		}
		syncs = append(syncs, "dir")
		return syncDir(d)
	}
	tail, err := again.OpenWriter(dir, "00001.wal")
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Close()
	if want := []string{"data 00001.wal", "dir"}; !slices.Equal(syncs, want) {
		t.Fatalf("opening the tail segment after a restart synced %q, want %q (its data, then its name)", syncs, want)
	}
	// Appends go on as usual: their data is synced, the directory no more.
	if _, err := tail.WriteAt([]byte("x"), 100); err != nil {
		t.Fatal(err)
	}
	if err := tail.Sync(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"data 00001.wal", "dir", "data 00001.wal"}; !slices.Equal(syncs, want) {
		t.Fatalf("syncs %q, want %q", syncs, want)
	}
	// A segment that is not there is reported as such (raft-wal then creates it).
	if _, err := again.OpenWriter(dir, "00002.wal"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("opening a missing segment: %v", err)
	}
}

// dirSync is one directory sync and what the raft directory held at that moment.
type dirSync struct {
	dir                        string
	wal, migrating, bolt, kept bool
}

// recordLogDirSyncs makes syncLogDir record every sync (and still sync) until the test ends.
func recordLogDirSyncs(t *testing.T, raftDir string) *[]dirSync {
	t.Helper()
	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(raftDir, name))
		return err == nil
	}
	var syncs []dirSync
	prev := syncLogDir
	syncLogDir = func(d string) error {
		syncs = append(syncs, dirSync{dir: d, wal: exists(walDirName), migrating: exists(walDirName + ".migrating"),
			bolt: exists(boltLogName), kept: exists(migratedLogName)})
		return syncDir(d)
	}
	t.Cleanup(func() { syncLogDir = prev })
	return &syncs
}

// Moving a raft-boltdb log to the WAL renames two things in the raft directory: the finished
// copy to wal/, then raft.db aside. Renames that no sync separates can reach the disk in either
// order, and a power cut that kept only the second left raft.db.migrated and no wal/: the next
// start took the log for a new node's, empty, and forgot the entries, the term and the vote.
// The copy's directory is synced before it is renamed, and the raft directory between the two
// renames.
func TestMovingTheLogToTheWALSyncsBetweenItsRenames(t *testing.T) {
	raftDir := t.TempDir()
	old, err := raftboltdb.NewBoltStore(filepath.Join(raftDir, boltLogName))
	if err != nil {
		t.Fatal(err)
	}
	if err := old.StoreLogs([]*raft.Log{{Index: 1, Term: 2, Type: raft.LogCommand, Data: []byte("entry 1")}}); err != nil {
		t.Fatal(err)
	}
	if err := old.SetUint64([]byte("CurrentTerm"), 2); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	syncs := recordLogDirSyncs(t, raftDir)
	w, err := openLogStore(raftDir, discardLogger(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if last, _ := w.LastIndex(); last != 1 {
		t.Fatalf("the moved log ends at %d", last)
	}
	copySynced, betweenRenames := false, false
	for _, s := range *syncs {
		switch {
		case s.dir == filepath.Join(raftDir, walDirName+".migrating") && s.migrating && !s.wal:
			copySynced = true
		case s.dir == raftDir && s.wal && !s.migrating && s.bolt && !s.kept:
			betweenRenames = true
		}
	}
	if !copySynced {
		t.Errorf("the copy's directory was not synced before it was renamed into place: %+v", *syncs)
	}
	if !betweenRenames {
		t.Errorf("the raft directory was not synced between naming the WAL and setting raft.db aside: %+v", *syncs)
	}
}

// A start that finds wal/ and raft.db both (the previous one died between the two renames)
// syncs the raft directory before setting raft.db aside: wal/'s name may not be on disk yet.
func TestSettingTheOldLogAsideAfterACrashSyncsFirst(t *testing.T) {
	raftDir := t.TempDir()
	w, err := openLogStore(raftDir, discardLogger(), 0) // the WAL, as the interrupted move left it
	if err != nil {
		t.Fatal(err)
	}
	if err := w.StoreLog(&raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	old, err := raftboltdb.NewBoltStore(filepath.Join(raftDir, boltLogName))
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	syncs := recordLogDirSyncs(t, raftDir)
	if w, err = openLogStore(raftDir, discardLogger(), 0); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if last, _ := w.LastIndex(); last != 1 {
		t.Fatalf("the log ends at %d", last)
	}
	if !slices.Contains(*syncs, dirSync{dir: raftDir, wal: true, bolt: true}) {
		t.Fatalf("raft.db was set aside without syncing the raft directory first: %+v", *syncs)
	}
}

// A new node's wal/ directory is itself made durable (raft-wal syncs only what it makes inside
// it): otherwise a power cut could take the whole log of a node that had acknowledged entries.
func TestANewLogDirectoryIsSynced(t *testing.T) {
	dataDir := t.TempDir()
	raftDir := filepath.Join(dataDir, "raft")
	if err := os.MkdirAll(raftDir, 0o750); err != nil {
		t.Fatal(err)
	}
	syncs := recordLogDirSyncs(t, raftDir)
	w, err := openLogStore(raftDir, discardLogger(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{raftDir, dataDir} {
		if !slices.ContainsFunc(*syncs, func(s dirSync) bool { return s.dir == d && s.wal }) {
			t.Errorf("%s was not synced once wal/ was made in it: %+v", d, *syncs)
		}
	}
	// A start that finds the directory syncs nothing more.
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	*syncs = nil
	if w, err = openLogStore(raftDir, discardLogger(), 0); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if len(*syncs) != 0 {
		t.Errorf("a restart synced %+v", *syncs)
	}
}
