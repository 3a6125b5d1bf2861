// Package kv is the state machine's ordered key-value store: named buckets of sorted keys, held
// in memory as copy-on-write B-trees. One writer at a time changes it in a transaction that is
// applied whole or not at all; any number of readers each see the version that was current when
// they began, unaffected by later writes. The writer changes its trees in place and publishes a
// version (a cheap clone) only when a reader asks for one, so only the nodes a reader may still
// be looking at are ever copied.
//
// Inserted entries are carved from 64 KiB arena blocks rather than allocated one by one, and
// each B-tree item carries its key's first 8 bytes: an insert then costs no allocation of its
// own, most key comparisons touch no memory outside the node, and the garbage collector tracks
// blocks instead of every key. A block lives as long as any entry in it, so deleted entries pin
// their block; a key written again gets an allocation of its own instead (see Put).
//
// It keeps nothing on disk by itself: the Raft log and its snapshots (WriteTo, Read) make the
// state durable, as Consul's in-memory state store does. The API follows bbolt's (buckets,
// Get/Put/Delete, cursors), which the state machine used before.
package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/google/btree"
)

// degree is the B-tree's branching: nodes of up to 31 entries (about 1 KiB), the unit a
// transaction copies when it first changes a node.
const degree = 16

// Errors returned by Put and Delete.
var (
	ErrTxNotWritable = errors.New("kv: transaction is read-only")
	ErrKeyRequired   = errors.New("kv: key required")
	ErrTooLarge      = errors.New("kv: key or value longer than a snapshot holds (MaxKeyLen, MaxValueLen)")
	ErrTxDone        = errors.New("kv: transaction is finished")
)

// entry is one key and its value, stored together: the key's klen bytes at p, the value right
// after them. p points into an arena block or, for a value that replaced another, into an
// allocation of its own. head holds the key's first bytes, so that most comparisons in a big
// bucket end without following p to a key elsewhere in memory (a cache miss each).
type entry struct {
	head       uint64
	p          *byte
	klen, vlen uint32
}

// newEntry makes an entry of kv, which holds the key's klen bytes followed by the value.
func newEntry(kv []byte, klen int) entry {
	return entry{head: keyHead(kv[:klen]), p: unsafe.SliceData(kv), klen: uint32(klen), vlen: uint32(len(kv) - klen)}
}

// probe is an entry to search with: only its key is compared.
func probe(key []byte) entry {
	return entry{head: keyHead(key), p: unsafe.SliceData(key), klen: uint32(len(key))}
}

// keyHead is the key's first 8 bytes as a big-endian number, zero-padded. Heads order as the
// keys do wherever they differ: a shorter key's padding is smaller than or equal to the other's
// bytes, and when equal it is a prefix of the other.
func keyHead(key []byte) uint64 {
	if len(key) >= 8 {
		return binary.BigEndian.Uint64(key)
	}
	var b [8]byte
	copy(b[:], key)
	return binary.BigEndian.Uint64(b[:])
}

func (e entry) key() []byte { return unsafe.Slice(e.p, e.klen) }

func (e entry) value() []byte {
	if e.vlen == 0 {
		return []byte{} // non-nil: present but empty; p+klen may be past the end of its memory
	}
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(e.p), e.klen)), e.vlen)
}

func less(a, b entry) bool {
	if a.head != b.head {
		return a.head < b.head
	}
	return bytes.Compare(a.key(), b.key()) < 0
}

type tree = btree.BTreeG[entry]

func newTree() *tree { return btree.NewG[entry](degree, less) }

// version is one published state: never changed once published.
type version struct {
	trees map[string]*tree
	size  Size
}

// Size is how much a version holds: its keys, and the bytes of those keys and their values (the
// heap holds more: B-tree nodes, the arena's unused and deleted bytes).
type Size struct {
	Keys  int64
	Bytes int64
}

// Size is the size of the latest committed state.
func (db *DB) Size() Size { return Size{Keys: db.sizeKeys.Load(), Bytes: db.sizeBytes.Load()} }

// DB is the store. The zero value is not usable; call New.
//
// The writer changes its own trees in place: a node is copied only when a published version
// still shares it. Versions are published on demand, when a reader begins after a commit, so a
// run of write transactions with no reader between them copies nothing (cloning a tree is
// cheap; it is the copies of shared nodes on the next write that cost): see
// TestWritesWithoutReadersCopyNothing and docs/performance.md.
type DB struct {
	// mu is held by a write transaction for its whole run and by a reader while it publishes
	// the writer's trees, so a reader never clones a tree that is half-way through a change.
	mu    sync.Mutex
	trees map[string]*tree // the writer's trees, changed in place; guarded by mu
	arena arena            // memory for inserted entries; guarded by mu
	// sizeKeys and sizeBytes are the last commit's Size: atomic, so Size never waits for a
	// write transaction.
	sizeKeys, sizeBytes atomic.Int64
	changed             map[string]bool // buckets committed since current was published; guarded by mu
	undo                []undoStep      // the running write transaction's undo log; guarded by mu
	behind              atomic.Bool     // commits exist that current does not show
	current             atomic.Pointer[version]
}

// undoStep puts one key of a bucket back as it was before a write: old when had, else absent.
type undoStep struct {
	tree *tree
	key  entry
	old  entry
	had  bool
}

// New returns an empty store.
func New() *DB {
	db := &DB{trees: map[string]*tree{}, changed: map[string]bool{}}
	db.current.Store(&version{trees: map[string]*tree{}})
	return db
}

// View runs fn in a read-only transaction on the latest committed state.
func (db *DB) View(fn func(tx *Tx) error) error {
	return fn(db.Begin())
}

// Begin starts a read-only transaction pinned to the latest committed state. It needs no
// closing and may be read for as long as the caller likes. When the latest commit is not
// published yet, Begin publishes it, waiting for a write transaction in progress to end first.
func (db *DB) Begin() *Tx {
	if db.behind.Load() {
		db.mu.Lock()
		db.publish()
		db.mu.Unlock()
	}
	return &Tx{version: db.current.Load()}
}

// BeginPublished starts a read-only transaction on the newest published version without
// publishing or waiting: it may miss the latest commits. It suits checks the state machine
// repeats anyway, such as a send's txn_id before it is proposed.
func (db *DB) BeginPublished() *Tx {
	return &Tx{version: db.current.Load()}
}

// publish makes the writer's committed trees the current version. Callers hold mu.
func (db *DB) publish() {
	if !db.behind.Load() {
		return
	}
	cur := db.current.Load()
	next := &version{trees: make(map[string]*tree, len(db.trees)), size: db.Size()}
	for name, t := range db.trees {
		if db.changed[name] {
			next.trees[name] = t.Clone() // from here on the writer copies the nodes it changes
		} else {
			next.trees[name] = cur.trees[name]
		}
	}
	clear(db.changed)
	db.current.Store(next)
	db.behind.Store(false)
}

// Update runs fn in the write transaction. Its changes are committed when fn returns nil and
// undone when it returns an error (or panics). Readers that begin meanwhile wait for it.
func (db *DB) Update(fn func(tx *Tx) error) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	tx := &Tx{db: db}
	committed := false
	defer func() {
		tx.done = true
		if !committed {
			tx.rollback()
		}
		db.undo = db.undo[:0]
	}()
	if err := fn(tx); err != nil {
		return err
	}
	tx.commit()
	committed = true
	return nil
}

// Tx is a transaction: read-only (from View or Begin) or the write transaction (from Update,
// valid only inside its function).
type Tx struct {
	version *version // nil in the write transaction
	db      *DB      // nil when read-only
	wrote   bool     // whether this write transaction changed anything
	created []string // the buckets it made
	grew    Size     // what this write transaction added (negative: removed)
	done    bool
}

// Writable reports whether the transaction may change the store.
func (tx *Tx) Writable() bool { return tx.db != nil }

// Bucket returns the named bucket. A bucket exists as soon as something is put in it; reading
// one that was never written finds it empty. name is not copied, so the state machine's
// constant names cost nothing per call: it must not change while the Bucket is in use.
func (tx *Tx) Bucket(name []byte) Bucket {
	return Bucket{tx: tx, name: name}
}

// readTree is the bucket's tree as this transaction sees it.
func (tx *Tx) readTree(name []byte) *tree {
	if tx.db != nil {
		return tx.db.trees[string(name)]
	}
	return tx.version.trees[string(name)]
}

// writeTree is the writer's tree of the bucket, made on its first write.
func (tx *Tx) writeTree(name []byte) (*tree, error) {
	if tx.db == nil {
		return nil, ErrTxNotWritable
	}
	if tx.done {
		return nil, ErrTxDone
	}
	t, ok := tx.db.trees[string(name)]
	if !ok {
		t = newTree()
		tx.db.trees[string(name)] = t
		tx.created = append(tx.created, string(name))
	}
	// Marked at once: if the transaction is rolled back instead, the next publish merely
	// clones a tree that holds what it held before. (Looked up first: only storing a key
	// copies the name.)
	if !tx.db.changed[string(name)] {
		tx.db.changed[string(name)] = true
	}
	tx.wrote = true
	return t, nil
}

// commit records the transaction's changes for the next publish.
func (tx *Tx) commit() {
	db := tx.db
	if !tx.wrote {
		return
	}
	db.sizeKeys.Add(tx.grew.Keys)
	db.sizeBytes.Add(tx.grew.Bytes)
	db.behind.Store(true)
}

// rollback undoes the transaction's writes, newest first, and drops the buckets it made.
func (tx *Tx) rollback() {
	db := tx.db
	for i := len(db.undo) - 1; i >= 0; i-- {
		u := db.undo[i]
		if u.had {
			u.tree.ReplaceOrInsert(u.old)
		} else {
			u.tree.Delete(u.key)
		}
	}
	for _, name := range tx.created {
		delete(db.trees, name)
	}
}

// bucketNames are the names of the buckets this transaction sees, sorted.
func (tx *Tx) bucketNames() []string {
	trees := tx.version.trees
	if tx.db != nil {
		trees = tx.db.trees
	}
	names := make([]string, 0, len(trees))
	for name := range trees {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Bucket is a sorted set of keys with their values, within one transaction.
type Bucket struct {
	tx   *Tx
	name []byte
}

// Get returns the key's value, or nil when the key is absent (an empty value is a non-nil empty
// slice). The slice is shared: it stays valid after the transaction and must not be changed.
func (b Bucket) Get(key []byte) []byte {
	t := b.tx.readTree(b.name)
	if t == nil {
		return nil
	}
	e, ok := t.Get(probe(key))
	if !ok {
		return nil
	}
	return e.value()
}

// Put sets key to value. Both are copied.
func (b Bucket) Put(key, value []byte) error {
	_, err := b.PutValue(key, value)
	return err
}

// PutValue is Put that also returns the store's copy of value, shared like Get's (never
// changed, valid after the transaction), so a caller can hand the value on without a copy of
// its own and reuse its buffer.
func (b Bucket) PutValue(key, value []byte) ([]byte, error) {
	t, e, kv, err := b.write(key, value)
	if err != nil {
		return nil, err
	}
	old, replaced := t.ReplaceOrInsert(e)
	b.tx.grew.Bytes += int64(len(kv))
	if !replaced {
		b.tx.grew.Keys++
		b.tx.db.undo = append(b.tx.db.undo, undoStep{tree: t, key: e})
		return kv[len(key):len(kv):len(kv)], nil
	}
	b.tx.db.undo = append(b.tx.db.undo, undoStep{tree: t, old: old, had: true})
	b.tx.grew.Bytes -= int64(old.klen) + int64(old.vlen)
	// A key written again (a room record, a cursor) is likely to be written again soon: its
	// values live in allocations of their own that the garbage collector frees one by one, so
	// they never pin an arena block.
	b.tx.db.arena.free(kv)
	own := append([]byte(nil), kv...)
	t.ReplaceOrInsert(newEntry(own, len(key)))
	return own[len(key):len(own):len(own)], nil
}

// Insert sets key to value only when key is absent, in the one descent of the tree that also
// finds whether it is there. It returns the present value, shared like Get's, or nil when it
// inserted. Both are copied.
func (b Bucket) Insert(key, value []byte) ([]byte, error) {
	t, e, kv, err := b.write(key, value)
	if err != nil {
		return nil, err
	}
	if old, present := t.ReplaceOrInsert(e); present {
		t.ReplaceOrInsert(old) // the same key: it goes back where it was
		b.tx.db.arena.free(kv)
		return old.value(), nil
	}
	b.tx.grew.Keys++
	b.tx.grew.Bytes += int64(len(kv))
	b.tx.db.undo = append(b.tx.db.undo, undoStep{tree: t, key: e})
	return nil, nil
}

// write prepares a write of key and value: the writer's tree and a new entry holding copies of
// both in the arena (kv), not yet in the tree.
func (b Bucket) write(key, value []byte) (*tree, entry, []byte, error) {
	if len(key) == 0 {
		return nil, entry{}, nil, ErrKeyRequired
	}
	if len(key) > MaxKeyLen || len(value) > MaxValueLen {
		return nil, entry{}, nil, ErrTooLarge
	}
	t, err := b.tx.writeTree(b.name)
	if err != nil {
		return nil, entry{}, nil, err
	}
	kv := b.tx.db.arena.alloc(len(key) + len(value))
	copy(kv, key)
	copy(kv[len(key):], value)
	return t, newEntry(kv, len(key)), kv, nil
}

// Delete removes key; removing an absent key is not an error.
func (b Bucket) Delete(key []byte) error {
	t, err := b.tx.writeTree(b.name)
	if err != nil {
		return err
	}
	if old, ok := t.Delete(probe(key)); ok {
		b.tx.db.undo = append(b.tx.db.undo, undoStep{tree: t, old: old, had: true})
		b.tx.grew.Keys--
		b.tx.grew.Bytes -= int64(old.klen) + int64(old.vlen)
	}
	return nil
}

// Len is the number of keys in the bucket.
func (b Bucket) Len() int {
	if t := b.tx.readTree(b.name); t != nil {
		return t.Len()
	}
	return 0
}

// ForEach calls fn for every key in order, stopping at the first error, which it returns.
func (b Bucket) ForEach(fn func(k, v []byte) error) error {
	t := b.tx.readTree(b.name)
	if t == nil {
		return nil
	}
	var err error
	t.Ascend(func(e entry) bool {
		err = fn(e.key(), e.value())
		return err == nil
	})
	return err
}

// Cursor returns a cursor over the bucket as the transaction sees it now. Changing the bucket
// while a cursor is in use is not supported.
func (b Bucket) Cursor() *Cursor {
	return &Cursor{tree: b.tx.readTree(b.name)}
}
