package consensus

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// A data_dir written by a version that kept the Raft log in raft-boltdb is moved to the WAL on
// the first start: every entry, the term and the vote, exactly once.
func TestOpenLogStoreMovesABoltLogToTheWAL(t *testing.T) {
	raftDir := t.TempDir()
	old, err := raftboltdb.NewBoltStore(filepath.Join(raftDir, boltLogName))
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i := uint64(5); i <= 300; i++ { // a log whose head was truncated by a snapshot
		logs = append(logs, &raft.Log{Index: i, Term: 3, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d", i))})
	}
	if err := old.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := old.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatal(err)
	}
	if err := old.Set([]byte("LastVoteCand"), []byte("n2")); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	// A copy that a crash interrupted is thrown away and made again.
	if err := os.MkdirAll(filepath.Join(raftDir, walDirName+".migrating"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(raftDir, walDirName+".migrating", "junk"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	w, err := openLogStore(raftDir, quiet, 0)
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		first, _ := w.FirstIndex()
		last, _ := w.LastIndex()
		if first != 5 || last != 300 {
			t.Fatalf("%s: log holds %d..%d, want 5..300", when, first, last)
		}
		var l raft.Log
		if err := w.GetLog(123, &l); err != nil || string(l.Data) != "entry 123" || l.Term != 3 {
			t.Fatalf("%s: entry 123 = %+v, %v", when, l, err)
		}
		if term, err := w.GetUint64([]byte("CurrentTerm")); err != nil || term != 3 {
			t.Fatalf("%s: term %d, %v", when, term, err)
		}
		if vote, err := w.Get([]byte("LastVoteCand")); err != nil || string(vote) != "n2" {
			t.Fatalf("%s: vote %q, %v", when, vote, err)
		}
	}
	check("after the move")
	if _, err := os.Stat(filepath.Join(raftDir, boltLogName)); !os.IsNotExist(err) {
		t.Fatalf("raft.db still in place: %v", err)
	}
	if _, err := os.Stat(filepath.Join(raftDir, migratedLogName)); err != nil {
		t.Fatalf("raft.db was not kept as %s: %v", migratedLogName, err)
	}
	if _, err := os.Stat(filepath.Join(raftDir, walDirName+".migrating")); !os.IsNotExist(err) {
		t.Fatalf("the temporary copy is left behind: %v", err)
	}
	// New appends go to the WAL, and a restart opens it as it is.
	if err := w.StoreLog(&raft.Log{Index: 301, Term: 4, Type: raft.LogCommand, Data: []byte("new")}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w, err = openLogStore(raftDir, quiet, 0); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if last, _ := w.LastIndex(); last != 301 {
		t.Fatalf("after a restart the log ends at %d, want 301", last)
	}
}

// A second node on the same data_dir must fail, not wait forever on the WAL's metadata lock.
func TestASecondOpenOfTheSameLogFails(t *testing.T) {
	raftDir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	first, err := openLogStore(raftDir, quiet, 0)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := lockDir(raftDir, 200*time.Millisecond)
	if err == nil {
		lock.release()
		t.Fatal("a second lock of an open data_dir was granted")
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := openLogStore(raftDir, quiet, 0)
	if err != nil {
		t.Fatalf("reopening after close: %v", err)
	}
	again.Close()
}
