package state

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket names: the layout of the state database. Keys with two parts join them with a NUL,
// which no identifier may contain.
var (
	bucketMeta      = []byte("meta")        // applied_index, stream_pos, signing key, ...
	bucketUsers     = []byte("users")       // user_id -> account
	bucketTokens    = []byte("tokens")      // token hash -> user_id
	bucketRooms     = []byte("rooms")       // room_id -> Room
	bucketAliases   = []byte("aliases")     // alias -> room_id
	bucketMembers   = []byte("members")     // room_id NUL user_id -> Member
	bucketUserRooms = []byte("user_rooms")  // user_id NUL room_id -> nothing
	bucketEvents    = []byte("events")      // room_id NUL pos(8, big endian) -> event JSON
	bucketEventIDs  = []byte("event_ids")   // event_id -> room_id NUL pos
	bucketState     = []byte("room_state")  // room_id NUL type NUL state_key -> event_id
	bucketTxns      = []byte("txns")        // user_id NUL txn_id -> event_id
	bucketReceipts  = []byte("receipts")    // room_id NUL user_id -> event_id
	bucketStream    = []byte("stream")      // pos(8) -> room_id: the org's stream in order
	bucketCursors   = []byte("fed_cursors") // destination org -> pos(8)

	bucketBridgeTxns    = []byte("bridge_txns")    // bridge NUL txn_id -> Result JSON
	bucketBridgeUsers   = []byte("bridge_users")   // virtual user_id -> id of the bridge that made it
	bucketBridgeCursors = []byte("bridge_cursors") // "events" -> pos(8)

	allBuckets = [][]byte{bucketMeta, bucketUsers, bucketTokens, bucketRooms, bucketAliases,
		bucketMembers, bucketUserRooms, bucketEvents, bucketEventIDs, bucketState, bucketTxns, bucketReceipts, bucketStream, bucketCursors,
		bucketBridgeTxns, bucketBridgeUsers, bucketBridgeCursors}

	keyAppliedIndex = []byte("applied_index")
	keyStreamPos    = []byte("stream_pos")
	keySigningKey   = []byte("signing_key")
	keyBridgeEvents = []byte("events")
)

// Store is one node's copy of the org state. Writes come only from the Raft FSM (Apply); reads
// are safe from any goroutine.
type Store struct {
	path string

	mu sync.RWMutex // guards db swaps (Restore) against readers
	db *bolt.DB

	members *memberCache
	rooms   *roomCache
}

// Open opens (creating if needed) the state database at path.
//
// The database is not fsynced: it is a cache of the Raft log. The consensus layer discards it
// at every start and rebuilds it from the last snapshot plus the log entries after it, which
// are durable, so a crash can never leave a torn or stale state behind.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("state: create dir: %w", err)
	}
	s := &Store{path: path, members: newMemberCache(), rooms: newRoomCache()}
	if err := s.openDB(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) openDB() error {
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoSync: true, NoFreelistSync: true,
		FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("state: open %s: %w", s.path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return fmt.Errorf("state: create buckets: %w", err)
	}
	s.db = db
	if err := s.members.load(db); err != nil {
		db.Close()
		return fmt.Errorf("state: load members: %w", err)
	}
	if err := s.rooms.load(db); err != nil {
		db.Close()
		return fmt.Errorf("state: load rooms: %w", err)
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	return err
}

// view runs fn in a read transaction on the current database.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return errors.New("state: store closed")
	}
	return s.db.View(fn)
}

func (s *Store) update(fn func(tx *bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return errors.New("state: store closed")
	}
	return s.db.Update(fn)
}

// AppliedIndex is the last Raft index whose commands are in the database.
func (s *Store) AppliedIndex() uint64 {
	var idx uint64
	_ = s.view(func(tx *bolt.Tx) error {
		idx = getUint(tx.Bucket(bucketMeta), keyAppliedIndex)
		return nil
	})
	return idx
}

// StreamPos is the org's current stream position: the position of the newest event.
func (s *Store) StreamPos() int64 {
	var pos int64
	_ = s.view(func(tx *bolt.Tx) error {
		pos = int64(getUint(tx.Bucket(bucketMeta), keyStreamPos))
		return nil
	})
	return pos
}

// Snapshot writes a consistent copy of the whole database to w.
func (s *Store) Snapshot(w io.Writer) error {
	return s.view(func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(w)
		return err
	})
}

// Restore replaces the database with a snapshot read from r.
func (s *Store) Restore(r io.Reader) error {
	tmp := s.path + ".restore"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("state: restore: %w", err)
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("state: restore copy: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("state: restore sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("state: restore close: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db != nil {
		if err := s.db.Close(); err != nil {
			return fmt.Errorf("state: restore close db: %w", err)
		}
		s.db = nil
	}
	if err := os.Rename(tmp, s.path); err != nil { // replaces the old file atomically
		return fmt.Errorf("state: restore rename: %w", err)
	}
	s.members = newMemberCache()
	return s.openDB()
}

func getUint(b *bolt.Bucket, key []byte) uint64 {
	v := b.Get(key)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putUint(b *bolt.Bucket, key []byte, v uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	return b.Put(key, buf[:])
}

func key2(a, b string) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}

func key3(a, b, c string) []byte {
	return append(append(key2(a, b), 0), c...)
}

func eventKey(roomID string, pos int64) []byte {
	k := make([]byte, 0, len(roomID)+9)
	k = append(k, roomID...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(pos))
}

func posFromEventKey(k []byte) int64 {
	if len(k) < 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(k[len(k)-8:]))
}

func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("state: decode %s: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("state: encode %s: %w", key, err)
	}
	return b.Put(key, raw)
}

// SnapshotView is a consistent read-only view of the database, taken at one applied index and
// written out later, while applying goes on.
type SnapshotView struct {
	tx *bolt.Tx
}

// BeginSnapshot pins the current state for a snapshot. Close it when written.
func (s *Store) BeginSnapshot() (*SnapshotView, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return nil, errors.New("state: store closed")
	}
	tx, err := s.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("state: begin snapshot: %w", err)
	}
	return &SnapshotView{tx: tx}, nil
}

// WriteTo writes the pinned database.
func (v *SnapshotView) WriteTo(w io.Writer) (int64, error) { return v.tx.WriteTo(w) }

// Close releases the view.
func (v *SnapshotView) Close() { _ = v.tx.Rollback() }
