package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/migrate"
	"github.com/hashicorp/raft-wal/segment"
	bolt "go.etcd.io/bbolt"
)

// The Raft log and stable store is hashicorp/raft-wal in data_dir/raft/wal: appends go to the
// end of a segment file (zeroed before use, walfiles.go) with one sync per batch, where a bbolt
// store (raft-boltdb) rewrote B-tree pages and synced twice per commit. Every append waits for that fsync, and the nodes
// of a cluster often share one disk, so it is the commit path's main cost after the network.
//
// Data directories of earlier versions hold the log in data_dir/raft/raft.db (raft-boltdb).
// openLogStore copies it into a new WAL once, in a directory that is renamed into place only
// when complete, then renames raft.db to raft.db.migrated, which the operator may delete.
const (
	walDirName      = "wal"
	boltLogName     = "raft.db"
	migratedLogName = "raft.db.migrated"
)

// logStore is the WAL with its metadata database, which WAL.Close leaves open, and its
// segment files.
type logStore struct {
	*wal.WAL
	meta  *metadb.BoltMetaDB
	files *segmentFS
	lock  *dirLock
	// onStore, when set, is told how long each write of entries took (Options.OnLogStore). It
	// is set before Raft starts and never changed after.
	onStore func(seconds float64, entries int)
	// heldAtStart, when set, is the FSM's bound on the entries this log held at start: entries
	// written at or below it replace a tail that was never committed (a new leader's), so they
	// are new, and the bound comes down below them. Set before Raft starts; only Raft's appends
	// (one goroutine) lower it.
	heldAtStart *atomic.Uint64
}

// StoreLogs appends logs to the WAL (one write and one fsync) and reports how long that took.
func (s *logStore) StoreLogs(logs []*raft.Log) error {
	if s.heldAtStart != nil && len(logs) > 0 && logs[0].Index <= s.heldAtStart.Load() {
		s.heldAtStart.Store(logs[0].Index - 1)
	}
	start := time.Now()
	err := s.WAL.StoreLogs(logs)
	if s.onStore != nil && err == nil {
		s.onStore(time.Since(start).Seconds(), len(logs))
	}
	return err
}

// StoreLog is StoreLogs of one entry (the WAL's own StoreLog would bypass the report).
func (s *logStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// Close closes the WAL, then its metadata database, its segment files and the directory lock.
func (s *logStore) Close() error {
	err := s.WAL.Close()
	if merr := s.meta.Close(); err == nil {
		err = merr
	}
	s.files.Close()
	s.lock.release()
	return err
}

// openWAL opens the WAL in dir, with segments of segmentSize bytes (0: raft-wal's default).
func openWAL(dir string, log *slog.Logger, segmentSize int) (*logStore, error) {
	files, err := newSegmentFS(dir, log)
	if err != nil {
		return nil, err
	}
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(dir, wal.WithMetaStore(meta), wal.WithLogger(newRaftLogger(log, "raft-wal")),
		wal.WithSegmentFiler(segment.NewFiler(dir, files)), wal.WithSegmentSize(segmentSize))
	if err != nil {
		meta.Close()
		files.Close()
		return nil, fmt.Errorf("consensus: open raft log %s: %w", dir, err)
	}
	return &logStore{WAL: w, meta: meta, files: files}, nil
}

func openLogStore(raftDir string, log *slog.Logger, segmentSize int) (*logStore, error) {
	// The WAL's metadata database waits for its file lock without end: fail fast instead when
	// another process has this data_dir.
	lock, err := lockDir(raftDir, 5*time.Second)
	if err != nil {
		return nil, err
	}
	s, err := openLogStoreLocked(raftDir, log, segmentSize)
	if err != nil {
		lock.release()
		return nil, err
	}
	s.lock = lock
	return s, nil
}

// syncLogDir makes the entries of a directory (names made, renamed, removed) durable: syncDir,
// or a test's stand-in.
var syncLogDir = syncDir

func openLogStoreLocked(raftDir string, log *slog.Logger, segmentSize int) (*logStore, error) {
	walDir := filepath.Join(raftDir, walDirName)
	oldLog := filepath.Join(raftDir, boltLogName)
	if _, err := os.Stat(oldLog); err == nil {
		if _, err := os.Stat(walDir); errors.Is(err, os.ErrNotExist) {
			if err := migrateBoltLog(oldLog, walDir, log); err != nil {
				return nil, err
			}
		}
		// The WAL is complete (it is only ever renamed into place whole), so the old file is
		// no longer read; it is kept, renamed, so that nothing is deleted behind the operator.
		// The WAL's name reaches the disk first: a crash that kept raft.db's new name but
		// not the WAL's (renames in a directory not synced between them may reach the disk
		// in any order) would start the node on an empty log under raft.db.migrated,
		// without its entries, its term and its vote.
		if err := syncLogDir(raftDir); err != nil {
			return nil, fmt.Errorf("consensus: sync %s: %w", raftDir, err)
		}
		if err := os.Rename(oldLog, filepath.Join(raftDir, migratedLogName)); err != nil {
			return nil, fmt.Errorf("consensus: set aside %s: %w", oldLog, err)
		}
	}
	if _, err := os.Stat(walDir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(walDir, 0o750); err != nil {
			return nil, fmt.Errorf("consensus: raft log dir: %w", err)
		}
		// raft-wal syncs the entries it makes inside wal/, not wal/ itself: without this a
		// power cut could take a new node's whole log (and its term and vote) with the
		// directory, after it had acknowledged entries. raft/ may be new too (made just
		// before, with the data_dir).
		for _, dir := range []string{raftDir, filepath.Dir(raftDir)} {
			if err := syncLogDir(dir); err != nil {
				return nil, fmt.Errorf("consensus: sync %s: %w", dir, err)
			}
		}
	}
	return openWAL(walDir, log, segmentSize)
}

// migrateBoltLog copies every log entry and the Raft term and vote from a raft-boltdb file into
// a new WAL at walDir.
func migrateBoltLog(oldLog, walDir string, log *slog.Logger) error {
	start := time.Now()
	old, err := raftboltdb.New(raftboltdb.Options{Path: oldLog,
		BoltOptions: &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true}})
	if err != nil {
		return fmt.Errorf("consensus: open old raft log %s: %w", oldLog, err)
	}
	defer old.Close()
	tmp := walDir + ".migrating"
	if err := os.RemoveAll(tmp); err != nil { // a copy a crash interrupted
		return fmt.Errorf("consensus: migrate raft log: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o750); err != nil {
		return fmt.Errorf("consensus: migrate raft log: %w", err)
	}
	s, err := openWAL(tmp, log, 0)
	if err != nil {
		return err
	}
	w := s.WAL
	ctx := context.Background()
	if err := migrate.CopyLogs(ctx, w, old, 4<<20, nil); err != nil {
		s.Close()
		return fmt.Errorf("consensus: migrate raft log entries: %w", err)
	}
	if err := copyTermAndVote(w, old); err != nil {
		s.Close()
		return fmt.Errorf("consensus: migrate raft term and vote: %w", err)
	}
	first, _ := w.FirstIndex()
	last, _ := w.LastIndex()
	if err := s.Close(); err != nil {
		return fmt.Errorf("consensus: migrate raft log: close: %w", err)
	}
	// What the copy holds is synced (raft-wal syncs its files); its names are made durable
	// before the directory takes its final one (raft-wal syncs them too, but it need not: a
	// log without entries never syncs its segment's name).
	if err := syncLogDir(tmp); err != nil {
		return fmt.Errorf("consensus: migrate raft log: %w", err)
	}
	if err := os.Rename(tmp, walDir); err != nil {
		return fmt.Errorf("consensus: migrate raft log: %w", err)
	}
	log.Info("raft log moved from raft-boltdb to raft-wal", "from", oldLog, "to", walDir,
		"first_index", first, "last_index", last, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// copyTermAndVote copies the keys hashicorp/raft keeps in its stable store. Unlike
// migrate.CopyStable it skips keys that were never written: a node that never voted has no
// LastVoteTerm.
func copyTermAndVote(dst, src raft.StableStore) error {
	for _, k := range []string{"CurrentTerm", "LastVoteTerm"} {
		v, err := src.GetUint64([]byte(k))
		if errors.Is(err, raftboltdb.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", k, err)
		}
		if err := dst.SetUint64([]byte(k), v); err != nil {
			return fmt.Errorf("write %s: %w", k, err)
		}
	}
	v, err := src.Get([]byte("LastVoteCand"))
	if errors.Is(err, raftboltdb.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read LastVoteCand: %w", err)
	}
	return dst.Set([]byte("LastVoteCand"), v)
}
