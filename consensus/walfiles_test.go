package consensus

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

const testSegmentSize = 64 << 10

// walSegments lists the WAL's segment files (raft-wal names them *.wal).
func walSegments(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// waitSpare waits for the background zeroing to leave a whole spare of size bytes.
func waitSpare(t *testing.T, dir string, size int64) os.FileInfo {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fi, err := os.Stat(filepath.Join(dir, spareSegmentName))
		if err == nil && fi.Size() == size {
			return fi
		}
		if time.Now().After(deadline) {
			t.Fatalf("no spare segment of %d bytes after 10 s: %v", size, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Appends that fill many segments are all read back, in this run and after a restart, from
// segments that were zero-filled to their full size before raft-wal wrote to them.
func TestWALSegmentsAreZeroFilledAndHoldEveryEntry(t *testing.T) {
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := openWAL(dir, quiet, testSegmentSize)
	if err != nil {
		t.Fatal(err)
	}
	data := func(i uint64) []byte { return bytes.Repeat([]byte(fmt.Sprintf("entry %d;", i)), 100) } // about 1 KiB
	const n = 1000                                                                                  // about 16 segments
	for i := uint64(1); i <= n; i += 5 {
		var batch []*raft.Log
		for j := i; j < i+5; j++ {
			batch = append(batch, &raft.Log{Index: j, Term: 1, Type: raft.LogCommand, Data: data(j)})
		}
		if err := s.StoreLogs(batch); err != nil {
			t.Fatalf("store %d..%d: %v", i, i+4, err)
		}
	}
	segs := walSegments(t, dir)
	if len(segs) < 10 {
		t.Fatalf("%d segments, want the log spread over 10 or more", len(segs))
	}
	for _, seg := range segs {
		fi, err := os.Stat(seg)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() < testSegmentSize {
			t.Fatalf("segment %s is %d bytes, want at least the full %d written before use", filepath.Base(seg), fi.Size(), testSegmentSize)
		}
	}
	checkAll := func(when string, s *logStore) {
		t.Helper()
		for i := uint64(1); i <= n; i++ {
			var l raft.Log
			if err := s.GetLog(i, &l); err != nil || !bytes.Equal(l.Data, data(i)) {
				t.Fatalf("%s: entry %d: %v (%d bytes)", when, i, err, len(l.Data))
			}
		}
	}
	checkAll("before a restart", s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := openWAL(dir, quiet, testSegmentSize)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	checkAll("after a restart", again)
	if err := again.StoreLog(&raft.Log{Index: n + 1, Term: 2, Type: raft.LogCommand, Data: []byte("after")}); err != nil {
		t.Fatal(err)
	}
	if last, _ := again.LastIndex(); last != n+1 {
		t.Fatalf("log ends at %d, want %d", last, n+1)
	}
}

// A deposed leader's uncommitted tail is cut off (raft: "clearing log suffix") and the node
// restarts: every entry before the cut reads back, and the log goes on from the cut. raft-wal
// before v0.4.2 marked the cut segment sealed without writing its index, so the next start
// failed on every entry in it ("sealed segment has no index block") and raft.NewRaft panicked:
// the node could not start again (hashicorp/raft-wal#31).
func TestTruncatedTailSurvivesARestart(t *testing.T) {
	for _, tc := range []struct {
		name     string
		n, keep  uint64
		restarts int
	}{
		{"cut inside the tail segment", 40, 37, 2},
		{"cut across segments", 300, 150, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			s, err := openWAL(dir, quiet, testSegmentSize)
			if err != nil {
				t.Fatal(err)
			}
			data := func(i, term uint64) []byte {
				return bytes.Repeat([]byte(fmt.Sprintf("entry %d term %d;", i, term)), 60)
			}
			for i := uint64(1); i <= tc.n; i++ {
				if err := s.StoreLog(&raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: data(i, 1)}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.DeleteRange(tc.keep+1, tc.n); err != nil { // what raft does to a log suffix
				t.Fatal(err)
			}
			// The new leader's entries follow the cut.
			for i := tc.keep + 1; i <= tc.keep+3; i++ {
				if err := s.StoreLog(&raft.Log{Index: i, Term: 2, Type: raft.LogCommand, Data: data(i, 2)}); err != nil {
					t.Fatal(err)
				}
			}
			last := tc.keep + 3
			for r := 0; r <= tc.restarts; r++ {
				for i := uint64(1); i <= last; i++ {
					term := uint64(1)
					if i > tc.keep {
						term = 2
					}
					var l raft.Log
					if err := s.GetLog(i, &l); err != nil || !bytes.Equal(l.Data, data(i, term)) {
						t.Fatalf("after %d restarts: entry %d: %v", r, i, err)
					}
				}
				if got, _ := s.LastIndex(); got != last {
					t.Fatalf("after %d restarts: log ends at %d, want %d", r, got, last)
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				if s, err = openWAL(dir, quiet, testSegmentSize); err != nil {
					t.Fatalf("restart %d: %v", r+1, err)
				}
			}
			defer s.Close()
			if err := s.StoreLog(&raft.Log{Index: last + 1, Term: 3, Type: raft.LogCommand, Data: []byte("after")}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A new segment is the spare made in the background (the same file, renamed), and the next
// spare follows.
func TestNewSegmentsTakeTheZeroedSpare(t *testing.T) {
	dir := t.TempDir()
	fs, err := newSegmentFS(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	first, err := fs.Create(dir, "a.wal", testSegmentSize)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	spare := waitSpare(t, dir, testSegmentSize)
	second, err := fs.Create(dir, "b.wal", testSegmentSize)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	got, err := os.Stat(filepath.Join(dir, "b.wal"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(spare, got) {
		t.Fatal("the second segment is a new file, not the spare that was ready")
	}
	content, err := os.ReadFile(filepath.Join(dir, "b.wal"))
	if err != nil {
		t.Fatal(err)
	}
	if len(content) != testSegmentSize || !bytes.Equal(content, make([]byte, testSegmentSize)) {
		t.Fatalf("the segment holds %d bytes, not %d zeros", len(content), testSegmentSize)
	}
	if next := waitSpare(t, dir, testSegmentSize); os.SameFile(next, got) {
		t.Fatal("no new spare after the old one was used")
	}
	// The file writes and syncs like any segment.
	if _, err := second.WriteAt([]byte("frame"), 0); err != nil {
		t.Fatal(err)
	}
	if err := second.Sync(); err != nil {
		t.Fatal(err)
	}
}

// Create never replaces a segment, a spare of another size is not used, and a spare a crash
// left half written is removed at start.
func TestSegmentFilesRefuseWhatIsNotTheirs(t *testing.T) {
	dir := t.TempDir()
	partial := filepath.Join(dir, zeroingSegmentName)
	if err := os.WriteFile(partial, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, spareSegmentName), make([]byte, 100), 0o600); err != nil {
		t.Fatal(err)
	}
	fs, err := newSegmentFS(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	if _, err := os.Stat(partial); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a half-written spare survived the start: %v", err)
	}
	f, err := fs.Create(dir, "a.wal", testSegmentSize)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, err := os.Stat(filepath.Join(dir, "a.wal")); err != nil || fi.Size() != testSegmentSize {
		t.Fatalf("segment from a spare of the wrong size: %v %v", fi, err)
	}
	waitSpare(t, dir, testSegmentSize) // the wrong-sized spare is replaced
	if _, err := fs.Create(dir, "a.wal", testSegmentSize); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("Create over an existing segment: %v", err)
	}
	// Zeroing that fails (here: stopped) leaves no file behind to block a retry.
	stopped := make(chan struct{})
	close(stopped)
	if err := writeZeroedFile(filepath.Join(dir, "b.wal"), testSegmentSize, stopped); !errors.Is(err, errStopped) {
		t.Fatalf("zeroing after stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "b.wal")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed zeroing left its file: %v", err)
	}
}

// Syncs are raw system calls only after a fast one and with a second P to run everything else
// meanwhile; one slow sync (a stalling disk) makes the next ordinary again.
func TestSegmentSyncsAreRawOnlyWhileFast(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "seg.wal"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var raws []bool
	slow := false
	// A real fdatasync can take longer than rawSyncMax on a loaded test machine, so the test
	// draws the line between fast and slow far above any real sync and crosses it by sleeping.
	const fastUnder = 500 * time.Millisecond
	seg := &segmentFile{File: f, dir: dir, fastUnder: fastUnder, syncData: func(f *os.File, raw bool) error {
		raws = append(raws, raw)
		if slow {
			time.Sleep(fastUnder + time.Millisecond)
		}
		return dataSync(f, raw)
	}}
	step := func(wantRaw bool, beSlow bool) {
		t.Helper()
		slow = beSlow
		if err := seg.Sync(); err != nil {
			t.Fatal(err)
		}
		if got := raws[len(raws)-1]; got != wantRaw {
			t.Fatalf("sync %d: raw %v, want %v (calls so far %v)", len(raws), got, wantRaw, raws)
		}
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	step(false, false) // the first sync of a file: no fast one seen yet
	step(true, false)
	step(true, true) // raw, and slow
	step(false, false)
	step(true, false)
	runtime.GOMAXPROCS(1)
	step(false, false) // one P: a raw sync would stop the whole process
	step(false, false)
}
