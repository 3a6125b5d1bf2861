// Package kv is the state machine's ordered key-value store: named buckets of sorted keys, held
// in memory as copy-on-write B-trees. One writer at a time changes it in a transaction that is
// applied whole or not at all; any number of readers each see the version that was current when
// they began, unaffected by later writes, without locks.
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

// version is one committed state: never changed once published.
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

// Size is the current version's size.
func (db *DB) Size() Size { return db.current.Load().size }

// DB is the store. The zero value is not usable; call New.
type DB struct {
	writer  sync.Mutex       // one write transaction at a time
	trees   map[string]*tree // the writer's copies, guarded by writer
	arena   arena            // memory for inserted entries, guarded by writer
	current atomic.Pointer[version]
}

// New returns an empty store.
func New() *DB {
	db := &DB{trees: map[string]*tree{}}
	db.current.Store(&version{trees: map[string]*tree{}})
	return db
}

// View runs fn in a read-only transaction on the current version.
func (db *DB) View(fn func(tx *Tx) error) error {
	return fn(db.Begin())
}

// Begin starts a read-only transaction pinned to the current version. It holds no lock, so it
// needs no closing and may be read for as long as the caller likes.
func (db *DB) Begin() *Tx {
	return &Tx{version: db.current.Load()}
}

// Update runs fn in the write transaction. Its changes are published when fn returns nil and
// discarded when it returns an error (or panics).
func (db *DB) Update(fn func(tx *Tx) error) error {
	db.writer.Lock()
	defer db.writer.Unlock()
	tx := &Tx{version: db.current.Load(), db: db, writes: map[string]*tree{}}
	defer func() { tx.done = true }()
	if err := fn(tx); err != nil {
		return err
	}
	tx.commit()
	return nil
}

// Tx is a transaction: read-only (from View or Begin) or the write transaction (from Update,
// valid only inside its function).
type Tx struct {
	version *version
	db      *DB              // nil when read-only
	writes  map[string]*tree // the buckets this write transaction changed: private copies
	grew    Size             // what this write transaction added (negative: removed)
	done    bool
}

// Writable reports whether the transaction may change the store.
func (tx *Tx) Writable() bool { return tx.db != nil }

// Bucket returns the named bucket. A bucket exists as soon as something is put in it; reading
// one that was never written finds it empty.
func (tx *Tx) Bucket(name []byte) *Bucket {
	return &Bucket{tx: tx, name: string(name)}
}

// readTree is the bucket's tree as this transaction sees it.
func (tx *Tx) readTree(name string) *tree {
	if t, ok := tx.writes[name]; ok {
		return t
	}
	if t, ok := tx.version.trees[name]; ok {
		return t
	}
	return nil
}

// writeTree is the transaction's private copy of the bucket, made on its first change.
func (tx *Tx) writeTree(name string) (*tree, error) {
	if tx.db == nil {
		return nil, ErrTxNotWritable
	}
	if tx.done {
		return nil, ErrTxDone
	}
	if t, ok := tx.writes[name]; ok {
		return t, nil
	}
	var t *tree
	if base, ok := tx.db.trees[name]; ok {
		t = base.Clone() // lazy: nodes are copied when first changed
	} else {
		t = newTree()
	}
	tx.writes[name] = t
	return t, nil
}

// commit publishes the changed buckets. The writer keeps the transaction's copies as its own
// and publishes clones of them, so no published tree is ever written again.
func (tx *Tx) commit() {
	if len(tx.writes) == 0 {
		return
	}
	next := &version{trees: make(map[string]*tree, len(tx.version.trees)+len(tx.writes)),
		size: Size{Keys: tx.version.size.Keys + tx.grew.Keys, Bytes: tx.version.size.Bytes + tx.grew.Bytes}}
	for name, t := range tx.version.trees {
		next.trees[name] = t
	}
	for name, t := range tx.writes {
		tx.db.trees[name] = t
		next.trees[name] = t.Clone()
	}
	tx.db.current.Store(next)
}

// bucketNames are the names of the buckets this transaction sees, sorted.
func (tx *Tx) bucketNames() []string {
	seen := map[string]bool{}
	for name := range tx.version.trees {
		seen[name] = true
	}
	for name := range tx.writes {
		seen[name] = true
	}
	names := make([]string, 0, len(seen))
	for name := range seen {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Bucket is a sorted set of keys with their values, within one transaction.
type Bucket struct {
	tx   *Tx
	name string
}

// Get returns the key's value, or nil when the key is absent (an empty value is a non-nil empty
// slice). The slice is shared: it stays valid after the transaction and must not be changed.
func (b *Bucket) Get(key []byte) []byte {
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
func (b *Bucket) Put(key, value []byte) error {
	if len(key) == 0 {
		return ErrKeyRequired
	}
	t, err := b.tx.writeTree(b.name)
	if err != nil {
		return err
	}
	kv := b.tx.db.arena.alloc(len(key) + len(value))
	copy(kv, key)
	copy(kv[len(key):], value)
	old, replaced := t.ReplaceOrInsert(newEntry(kv, len(key)))
	b.tx.grew.Bytes += int64(len(kv))
	if !replaced {
		b.tx.grew.Keys++
	} else {
		b.tx.grew.Bytes -= int64(old.klen) + int64(old.vlen)
		// A key written again (a room record, a cursor) is likely to be written again soon:
		// its values live in allocations of their own that the garbage collector frees one by
		// one, so they never pin an arena block.
		b.tx.db.arena.free(kv)
		own := append([]byte(nil), kv...)
		t.ReplaceOrInsert(newEntry(own, len(key)))
	}
	return nil
}

// Delete removes key; removing an absent key is not an error.
func (b *Bucket) Delete(key []byte) error {
	t, err := b.tx.writeTree(b.name)
	if err != nil {
		return err
	}
	if old, ok := t.Delete(probe(key)); ok {
		b.tx.grew.Keys--
		b.tx.grew.Bytes -= int64(old.klen) + int64(old.vlen)
	}
	return nil
}

// Len is the number of keys in the bucket.
func (b *Bucket) Len() int {
	if t := b.tx.readTree(b.name); t != nil {
		return t.Len()
	}
	return 0
}

// ForEach calls fn for every key in order, stopping at the first error, which it returns.
func (b *Bucket) ForEach(fn func(k, v []byte) error) error {
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
func (b *Bucket) Cursor() *Cursor {
	return &Cursor{tree: b.tx.readTree(b.name)}
}
