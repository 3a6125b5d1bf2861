package consensus

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	walfs "github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/types"
)

// raft-wal preallocates each segment file with fallocate, which leaves its blocks "unwritten":
// the first write to each block changes the file's extent map, so every fsync of an append
// also commits the file system's journal. A segment already written full of zeros holds
// allocated, written blocks, and an append to it needs only its own data flushed (fdatasync).
// On this project's VM that took about 30 µs of machine CPU and 0.07–0.1 ms of latency under
// load off every log write on every node, and gave the one-at-a-time cluster row 3–16% more
// commits (docs/performance.md), as etcd's WAL gains from writing into files it prepared.
//
// Zeroing a 64 MiB segment takes about 50 ms of disk, so segmentFS keeps one segment's worth of
// zeros ready (spareSegmentName, made in the background after each segment it hands out) and
// renames it into place when raft-wal starts a new segment; only a node's very first segment,
// or a rotation that outruns the zeroing, waits for it.
const (
	spareSegmentName    = "next-segment.zeroed"  // a whole, synced spare; not a segment name (.wal)
	zeroingSegmentName  = "next-segment.zeroing" // a spare being written; removed if found at start
	segmentZeroingChunk = 1 << 20
)

// segmentFS is raft-wal's file system (walfs.FS) with segments created already zeroed and
// synced with fdatasync. Close stops and waits for the spare's zeroing.
type segmentFS struct {
	*walfs.FS
	dir string
	log *slog.Logger

	mu      sync.Mutex
	zeroing bool // a goroutine is making the spare
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup

	// syncData and syncDir are dataSync and syncDir for the segments it hands out, or a test's
	// stand-ins (set before the first segment).
	syncData func(f *os.File, raw bool) error
	syncDir  func(dir string) error
}

// newSegmentFS returns the file system for the WAL in dir, throwing away a spare that a crash
// left half made.
func newSegmentFS(dir string, log *slog.Logger) (*segmentFS, error) {
	if err := os.Remove(filepath.Join(dir, zeroingSegmentName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("consensus: remove partial spare segment: %w", err)
	}
	return &segmentFS{FS: walfs.New(), dir: dir, log: log, stop: make(chan struct{})}, nil
}

// Create makes segment name of size bytes, all zeros and synced, from the spare when one of that
// size is ready; then starts making the next spare. (raft-wal's Filer always passes the WAL's
// own directory as dir.)
func (s *segmentFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	path := filepath.Join(dir, name)
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("consensus: create segment %s: %w", name, os.ErrExist)
	}
	spare := filepath.Join(s.dir, spareSegmentName)
	if fi, err := os.Stat(spare); err == nil && uint64(fi.Size()) == size && size > 0 {
		if err := os.Rename(spare, path); err != nil {
			return nil, fmt.Errorf("consensus: take spare segment: %w", err)
		}
	} else if err := writeZeroedFile(path, size, nil); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("consensus: open segment %s: %w", name, err)
	}
	if size > 0 {
		s.makeSpare(size)
	}
	// The new name reaches the disk with the directory's sync on the segment's first Sync,
	// before raft-wal reports anything in it as stored (as walfs.File does).
	return &segmentFile{File: f, dir: dir, syncData: s.syncData, syncDir: s.syncDir}, nil
}

// OpenWriter opens the segment a restart appends to (the tail: raft-wal reads it back, then
// appends to it), synced as Create's are. (fdatasync is enough for any segment, zeroed or not:
// it flushes whatever metadata reading the data back needs.)
//
// Before raft-wal reads it, the segment's data and its name are made durable: a process that
// died (SIGKILL, OOM, a panic) may have left appends that were written but never synced, and a
// segment whose name was never synced (made, or renamed from the spare, just before the death;
// an append's fdatasync on a zeroed segment commits no directory change). Everything read back
// here counts as stored from now on: Raft acknowledges entries it finds already in its log
// without storing them again, and nothing would sync them or the name later, so a power cut
// after the restart could lose entries this node had acknowledged, or the whole segment.
func (s *segmentFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	seg := &segmentFile{File: f, dir: dir, syncData: s.syncData, syncDir: s.syncDir}
	if err := seg.Sync(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("consensus: sync segment %s: %w", name, err)
	}
	return seg, nil
}

// makeSpare starts zeroing the next spare unless one is ready or being made.
func (s *segmentFS) makeSpare(size uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.zeroing {
		return
	}
	if fi, err := os.Stat(filepath.Join(s.dir, spareSegmentName)); err == nil && uint64(fi.Size()) == size {
		return
	}
	s.zeroing = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := s.zeroSpare(size)
		s.mu.Lock()
		s.zeroing = false
		s.mu.Unlock()
		if err != nil && !errors.Is(err, errStopped) {
			s.log.Warn("raft log: could not prepare the next segment; it will be zeroed when needed", "err", err)
		}
	}()
}

var errStopped = errors.New("consensus: zeroing of the spare segment stopped")

// zeroSpare writes the spare under a temporary name and renames it into place once synced, so
// a spare under spareSegmentName is always whole.
func (s *segmentFS) zeroSpare(size uint64) error {
	tmp := filepath.Join(s.dir, zeroingSegmentName)
	if err := writeZeroedFile(tmp, size, s.stop); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, spareSegmentName)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("consensus: name spare segment: %w", err)
	}
	return nil
}

// Close stops the spare's zeroing and waits for it; a spare left half made is removed.
func (s *segmentFS) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.stop)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// writeZeroedFile creates path holding size zero bytes, synced, unless stop closes first. On
// failure it removes what it wrote, so that a retry can create path again.
func writeZeroedFile(path string, size uint64, stop <-chan struct{}) (err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("consensus: create segment file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(path)
		}
	}()
	zeros := make([]byte, min(size, segmentZeroingChunk))
	for off := uint64(0); off < size; {
		select {
		case <-stop:
			return errStopped
		default:
		}
		n, werr := f.Write(zeros[:min(uint64(len(zeros)), size-off)])
		if werr != nil {
			return fmt.Errorf("consensus: zero segment file: %w", werr)
		}
		off += uint64(n)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("consensus: sync zeroed segment file: %w", err)
	}
	if err := f.Close(); err != nil { // the deferred Close then only reports it closed
		return fmt.Errorf("consensus: close zeroed segment file: %w", err)
	}
	return nil
}

// segmentFile is an open segment. Its blocks are written already, so Sync flushes only data
// (fdatasync); the first Sync also syncs the directory, making the segment's name durable.
type segmentFile struct {
	*os.File
	dir string
	// raft-wal's appends and syncs are serialized, so these need no lock.
	synced   bool // the directory was synced
	lastFast bool // the last sync took less than fastUnder (rawSyncMax)
	// syncData is dataSync, syncDir is syncDir, or a test's stand-ins.
	syncData func(f *os.File, raw bool) error
	syncDir  func(dir string) error
	// fastUnder is rawSyncMax, or a test's own bound (its syncs share the CPU with other tests).
	fastUnder time.Duration
}

// rawSyncMax bounds the syncs that may be raw system calls: a sync slower than this makes the
// next one an ordinary system call again.
const rawSyncMax = 2 * time.Millisecond

// Sync flushes the segment's data. While syncs are fast (under rawSyncMax) and the process has
// more than one P, it does so as a raw system call, which Go's scheduler does not see: an
// ordinary one that blocks past a sysmon tick (20 µs) makes sysmon hand its P to another
// thread, wake one to run it, and fall back to waking every 20 µs itself. With a sync on every
// append that kept sysmon at about 5,000 wake-ups a second per node on this project's VM, each a
// context switch; raw syncs took 8% off the nodes' CPU and gave the one-at-a-time cluster row
// 10% more commits (docs/performance.md). The price is that the P waits with the disk (the other
// P runs everything else) and a garbage collector's stop-the-world waits for the sync to end.
// Both last one sync: one slower than rawSyncMax (a stalling disk) makes the following syncs
// ordinary system calls again until one is fast.
func (f *segmentFile) Sync() error {
	raw := f.lastFast && runtime.GOMAXPROCS(0) > 1
	start := time.Now()
	syncData := f.syncData
	if syncData == nil {
		syncData = dataSync
	}
	if err := syncData(f.File, raw); err != nil {
		f.lastFast = false
		return err
	}
	fastUnder := f.fastUnder
	if fastUnder == 0 {
		fastUnder = rawSyncMax
	}
	f.lastFast = time.Since(start) < fastUnder
	if !f.synced {
		syncDirectory := f.syncDir
		if syncDirectory == nil {
			syncDirectory = syncDir
		}
		if err := syncDirectory(f.dir); err != nil {
			return err
		}
		f.synced = true
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
