package state

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/parley-chat/parley/consensus/kv"
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
	bucketStream    = []byte("stream")      // pos(8) -> room_id [NUL org]*: the org's stream in order (streamValue)
	bucketCursors   = []byte("fed_cursors") // destination org -> pos(8)

	bucketBridgeTxns    = []byte("bridge_txns")    // bridge NUL txn_id -> Result JSON, or a claim (bridgeTxn)
	bucketBridgeUsers   = []byte("bridge_users")   // virtual user_id -> id of the bridge that made it
	bucketBridgeCursors = []byte("bridge_cursors") // "events" -> pos(8)

	keyAppliedIndex = []byte("applied_index")
	keyStreamPos    = []byte("stream_pos")
	keySigningKey   = []byte("signing_key")
	keyBridgeEvents = []byte("events")
)

// Store is one node's copy of the org state. Writes come only from the Raft FSM (Apply); reads
// are safe from any goroutine.
type Store struct {
	mu sync.RWMutex // guards db swaps (Restore, Close) against readers
	db *kv.DB

	members *memberCache
	rooms   *roomCache
}

// Open returns an empty store.
//
// The state lives in memory (consensus/kv) and is not written to disk by itself: it is a
// function of the Raft log. The consensus layer rebuilds it at every start from the last
// snapshot plus the log entries after it, which are durable, so a crash can never leave a torn
// or stale state behind.
func Open() *Store {
	s := &Store{members: newMemberCache(), rooms: newRoomCache()}
	if err := s.use(kv.New()); err != nil {
		panic(err) // an empty store has nothing to load
	}
	return s
}

// use makes db the store's state and loads the caches from it. The caller holds mu, or owns s.
func (s *Store) use(db *kv.DB) error {
	members, rooms := newMemberCache(), newRoomCache()
	if err := members.load(db); err != nil {
		return fmt.Errorf("state: load members: %w", err)
	}
	if err := rooms.load(db); err != nil {
		return fmt.Errorf("state: load rooms: %w", err)
	}
	// Swap the contents, not the caches: readers hold no lock on s while they use them.
	s.members.mu.Lock()
	s.members.joined = members.joined
	s.members.mu.Unlock()
	s.rooms.mu.Lock()
	s.rooms.rooms = rooms.rooms
	s.rooms.mu.Unlock()
	s.db = db
	return nil
}

// Close drops the state; reads and writes after it fail.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.db = nil
	return nil
}

// view runs fn in a read transaction on the current state.
func (s *Store) view(fn func(tx *kv.Tx) error) error {
	return s.read(fn, (*kv.DB).Begin)
}

// viewPublished runs fn on the newest published state without waiting for a write in progress
// (kv.DB.BeginPublished): for checks the state machine repeats.
func (s *Store) viewPublished(fn func(tx *kv.Tx) error) error {
	return s.read(fn, (*kv.DB).BeginPublished)
}

func (s *Store) read(fn func(tx *kv.Tx) error, begin func(*kv.DB) *kv.Tx) error {
	s.mu.RLock()
	db := s.db
	s.mu.RUnlock()
	if db == nil {
		return errors.New("state: store closed")
	}
	return fn(begin(db))
}

func (s *Store) update(fn func(tx *kv.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return errors.New("state: store closed")
	}
	return s.db.Update(fn)
}

// Size is what the state holds: its keys, and the bytes of those keys and their values. It grows
// with the history kept, since every node holds the whole state in memory.
func (s *Store) Size() kv.Size {
	s.mu.RLock()
	db := s.db
	s.mu.RUnlock()
	if db == nil {
		return kv.Size{}
	}
	return db.Size()
}

// AppliedIndex is the last Raft index whose commands are in the database.
func (s *Store) AppliedIndex() uint64 {
	var idx uint64
	_ = s.view(func(tx *kv.Tx) error {
		idx = getUint(tx.Bucket(bucketMeta), keyAppliedIndex)
		return nil
	})
	return idx
}

// StreamPos is the org's current stream position: the position of the newest event.
func (s *Store) StreamPos() int64 {
	var pos int64
	_ = s.view(func(tx *kv.Tx) error {
		pos = int64(getUint(tx.Bucket(bucketMeta), keyStreamPos))
		return nil
	})
	return pos
}

// Snapshot writes a consistent copy of the whole state to w.
func (s *Store) Snapshot(w io.Writer) error {
	return s.view(func(tx *kv.Tx) error {
		_, err := tx.WriteTo(w)
		return err
	})
}

// Restore replaces the state with a snapshot read from r: one written by Snapshot, or a bbolt
// database file, which snapshots were before the state moved to memory. Nothing changes when
// the snapshot is damaged.
func (s *Store) Restore(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var db *kv.DB
	var err error
	if head, _ := br.Peek(boltMagicEnd); isBoltFile(head) {
		db, err = readBoltSnapshot(br)
	} else {
		db, err = kv.Read(br)
	}
	if err != nil {
		return fmt.Errorf("state: restore: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.use(db)
}

func getUint(b kv.Bucket, key []byte) uint64 {
	v := b.Get(key)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putUint(b kv.Bucket, key []byte, v uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	return b.Put(key, buf[:])
}

func key2(a, b string) []byte {
	return appendKey2(make([]byte, 0, len(a)+1+len(b)), a, b)
}

func appendKey2(dst []byte, a, b string) []byte {
	dst = append(dst, a...)
	dst = append(dst, 0)
	return append(dst, b...)
}

func key3(a, b, c string) []byte {
	return append(append(key2(a, b), 0), c...)
}

func eventKey(roomID string, pos int64) []byte {
	return appendEventKey(make([]byte, 0, len(roomID)+9), roomID, pos)
}

func appendEventKey(dst []byte, roomID string, pos int64) []byte {
	dst = append(dst, roomID...)
	dst = append(dst, 0)
	return binary.BigEndian.AppendUint64(dst, uint64(pos))
}

func posFromEventKey(k []byte) int64 {
	if len(k) < 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(k[len(k)-8:]))
}

func getJSON(b kv.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("state: decode %s: %w", key, err)
	}
	return true, nil
}

func putJSON(b kv.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("state: encode %s: %w", key, err)
	}
	return b.Put(key, raw)
}

// SnapshotView is a consistent read-only view of the state, taken at one applied index and
// written out later, while applying goes on.
type SnapshotView struct {
	tx *kv.Tx
}

// BeginSnapshot pins the current state for a snapshot. Close it when written.
func (s *Store) BeginSnapshot() (*SnapshotView, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return nil, errors.New("state: store closed")
	}
	return &SnapshotView{tx: s.db.Begin()}, nil
}

// WriteTo writes the pinned state.
func (v *SnapshotView) WriteTo(w io.Writer) (int64, error) { return v.tx.WriteTo(w) }

// Close releases the view.
func (v *SnapshotView) Close() { v.tx = nil }
