package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"

	"github.com/parley-chat/parley/consensus/kv"
	bolt "go.etcd.io/bbolt"
)

// Snapshots taken before the state moved to memory are bbolt database files. A node restoring
// one (an older snapshot on disk, or sent by a node not yet upgraded) converts it, so upgrading
// never loses state.

// boltMagicEnd is how many leading bytes of a file tell whether it is a bbolt database: the
// first meta page's header (16 bytes) and its magic number.
const boltMagicEnd = 20

const boltMagic = 0xED0CDAED

func isBoltFile(head []byte) bool {
	return len(head) >= boltMagicEnd && binary.LittleEndian.Uint32(head[16:20]) == boltMagic
}

// readBoltSnapshot copies every bucket of the bbolt file read from r into a new store.
//
// bbolt trusts its file: it follows page ids, counts and offsets without checking them, so a
// damaged file could fault (a fatal error, not a panic: the node would die), loop forever or
// panic. The file is therefore checked first (checkBoltFile) for everything the copy reads, and
// a fault or panic left in bbolt becomes an error.
func readBoltSnapshot(r io.Reader) (db *kv.DB, err error) {
	f, err := os.CreateTemp("", "parley-bolt-snapshot-*.db")
	if err != nil {
		return nil, fmt.Errorf("bbolt snapshot: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return nil, fmt.Errorf("bbolt snapshot: copy: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("bbolt snapshot: %w", err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, fmt.Errorf("bbolt snapshot: damaged: %v", p)
		}
	}()
	old, err := bolt.Open(f.Name(), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("bbolt snapshot: open: %w", err)
	}
	defer old.Close()
	if err := checkBoltFile(f.Name(), old); err != nil {
		return nil, fmt.Errorf("bbolt snapshot: damaged: %w", err)
	}
	db = kv.New()
	err = old.View(func(from *bolt.Tx) error {
		return db.Update(func(to *kv.Tx) error {
			return from.ForEach(func(name []byte, b *bolt.Bucket) error {
				dst := to.Bucket(name)
				return b.ForEach(func(k, v []byte) error {
					if v == nil && b.Bucket(k) != nil {
						return errors.New("nested bucket " + string(k))
					}
					return dst.Put(k, v)
				})
			})
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bbolt snapshot: convert: %w", err)
	}
	return db, nil
}

// The bbolt file format (go.etcd.io/bbolt/internal/common), in the machine's byte order: a page
// is a header (id, flags, element count, number of overflow pages) and elements, each 16 bytes,
// whose keys and values lie at offsets from the element; pages 0 and 1 are meta pages.
const (
	boltPageHeader   = 16
	boltElementSize  = 16
	boltBranchPage   = 0x01
	boltLeafPage     = 0x02
	boltBucketLeaf   = 0x01
	boltBucketHeader = 16 // a bucket's root page id and sequence; an inline bucket's page follows
	boltVersion      = 2
	boltMaxDepth     = 64 // far beyond any real tree: a page holds at least two keys
)

// checkBoltFile walks the pages of the bbolt file at path that readBoltSnapshot's copy reads
// (the root bucket's tree, then each bucket's) and refuses the file unless each lies within the
// file and below its high-water mark, is the page its id names, of the kind expected, reached
// once, and holds its elements, keys and values within its bounds; unless the root holds only
// buckets and those hold no buckets; and unless bucket names and keys are ones the current
// snapshot format writes (a state it could not snapshot would be lost at the next one).
func checkBoltFile(path string, db *bolt.DB) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	c := &boltChecker{f: f, size: uint64(info.Size()), pageSize: uint64(db.Info().PageSize), seen: map[uint64]bool{}}
	if c.pageSize < boltPageHeader+64 || c.size < 2*c.pageSize {
		return fmt.Errorf("page size %d in a file of %d bytes", c.pageSize, c.size)
	}
	// The meta page bbolt reads: the valid one with the higher transaction id (DB.meta).
	var metas [2][]byte
	for i := range metas {
		if metas[i], err = c.read(uint64(i)*c.pageSize, boltPageHeader+64); err != nil {
			return err
		}
		metas[i] = metas[i][boltPageHeader:]
	}
	ne := binary.NativeEndian
	a, b := metas[0], metas[1]
	if ne.Uint64(b[48:]) > ne.Uint64(a[48:]) {
		a, b = b, a
	}
	meta := a
	if !validBoltMeta(a) {
		meta = b
	}
	if !validBoltMeta(meta) {
		return errors.New("no valid meta page")
	}
	if err := db.View(func(tx *bolt.Tx) error {
		if uint64(tx.ID()) != ne.Uint64(meta[48:]) {
			return fmt.Errorf("bbolt reads transaction %d, the meta pages say %d", tx.ID(), ne.Uint64(meta[48:]))
		}
		return nil
	}); err != nil {
		return err
	}
	// The high-water mark is the meta page's word, and anyone can recompute the checksum that
	// guards it: no page id the checks accept may lie past the end of the file either.
	c.hwm = min(ne.Uint64(meta[40:]), c.size/c.pageSize)
	c.seen[0], c.seen[1] = true, true
	return c.tree(ne.Uint64(meta[16:]), 0, true)
}

func validBoltMeta(m []byte) bool {
	ne := binary.NativeEndian
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	return ne.Uint32(m[0:]) == boltMagic && ne.Uint32(m[4:]) == boltVersion && ne.Uint64(m[56:]) == h.Sum64()
}

type boltChecker struct {
	f              *os.File
	size, pageSize uint64
	hwm            uint64 // the meta page's high-water mark, at most the file's pages: no page id at or above it is in use
	seen           map[uint64]bool
}

func (c *boltChecker) read(off, n uint64) ([]byte, error) {
	if off > c.size || n > c.size-off {
		return nil, fmt.Errorf("%d bytes at %d in a file of %d", n, off, c.size)
	}
	b := make([]byte, n)
	if _, err := c.f.ReadAt(b, int64(off)); err != nil {
		return nil, err
	}
	return b, nil
}

// tree checks the page id and everything below it, in the root bucket (root) or in a bucket.
func (c *boltChecker) tree(id uint64, depth int, root bool) error {
	if id < 2 || id >= c.hwm || c.seen[id] {
		return fmt.Errorf("page %d: out of range (2..%d) or reached twice", id, c.hwm)
	}
	c.seen[id] = true
	if depth > boltMaxDepth {
		return fmt.Errorf("page %d: tree deeper than %d", id, boltMaxDepth)
	}
	head, err := c.read(id*c.pageSize, boltPageHeader)
	if err != nil {
		return fmt.Errorf("page %d: %w", id, err)
	}
	ne := binary.NativeEndian
	overflow := uint64(ne.Uint32(head[12:]))
	if ne.Uint64(head) != id || id+overflow >= c.hwm {
		return fmt.Errorf("page %d: names itself %d, or its %d overflow pages pass the high-water mark %d", id, ne.Uint64(head), overflow, c.hwm)
	}
	// So the page and its overflow lie within the file (hwm is capped at its page count) before
	// a single overflow page is marked: the loop below costs memory for each one.
	for i := id + 1; i <= id+overflow; i++ {
		if c.seen[i] {
			return fmt.Errorf("page %d: overflow page %d is reached twice", id, i)
		}
		c.seen[i] = true
	}
	page, err := c.read(id*c.pageSize, (overflow+1)*c.pageSize)
	if err != nil {
		return fmt.Errorf("page %d: %w", id, err)
	}
	children, err := c.page(page, root)
	if err != nil {
		return fmt.Errorf("page %d: %w", id, err)
	}
	for _, child := range children {
		if err := c.tree(child, depth+1, root); err != nil {
			return err
		}
	}
	return nil
}

// page checks a page's elements (and, in the root bucket, the buckets they are) and returns the
// pages a branch page points to.
func (c *boltChecker) page(page []byte, root bool) ([]uint64, error) {
	ne := binary.NativeEndian
	flags, count := ne.Uint16(page[8:]), uint64(ne.Uint16(page[10:]))
	if boltPageHeader+count*boltElementSize > uint64(len(page)) {
		return nil, fmt.Errorf("%d elements do not fit in %d bytes", count, len(page))
	}
	var children []uint64
	for i := range count {
		at := boltPageHeader + i*boltElementSize
		elem := page[at : at+boltElementSize]
		switch flags {
		case boltBranchPage:
			if _, err := boltBytes(page, at, ne.Uint32(elem[0:]), ne.Uint32(elem[4:])); err != nil {
				return nil, err
			}
			children = append(children, ne.Uint64(elem[8:]))
		case boltLeafPage:
			pos, ksize, vsize := ne.Uint32(elem[4:]), ne.Uint32(elem[8:]), ne.Uint32(elem[12:])
			pair, err := boltBytes(page, at, pos, ksize+vsize)
			if err != nil || ksize+vsize < ksize {
				return nil, fmt.Errorf("element %d: key and value out of the page", i)
			}
			key, value := pair[:ksize], pair[ksize:]
			isBucket := ne.Uint32(elem[0:])&boltBucketLeaf != 0
			switch {
			case isBucket != root:
				return nil, fmt.Errorf("element %d: a bucket within a bucket, or a key outside of any", i)
			case root && (len(key) == 0 || len(key) > kv.MaxNameLen):
				return nil, fmt.Errorf("bucket name of %d bytes", len(key))
			case !root && (len(key) == 0 || len(key) > kv.MaxKeyLen || len(value) > kv.MaxValueLen):
				return nil, fmt.Errorf("key of %d bytes with a value of %d", len(key), len(value))
			case root:
				if err := c.bucket(value); err != nil {
					return nil, fmt.Errorf("bucket %q: %w", key, err)
				}
			}
		default:
			return nil, fmt.Errorf("flags %#x: not a branch or leaf page", flags)
		}
	}
	if flags == boltBranchPage && count == 0 {
		return nil, errors.New("a branch page without elements")
	}
	return children, nil
}

// bucket checks a bucket's tree: its root page, or its inline page (a leaf, within the value).
func (c *boltChecker) bucket(value []byte) error {
	if len(value) < boltBucketHeader {
		return fmt.Errorf("a bucket header of %d bytes", len(value))
	}
	if root := binary.NativeEndian.Uint64(value); root != 0 {
		return c.tree(root, 0, false)
	}
	inline := value[boltBucketHeader:]
	if len(inline) < boltPageHeader || binary.NativeEndian.Uint16(inline[8:]) != boltLeafPage {
		return errors.New("an inline bucket that is not a leaf page")
	}
	_, err := c.page(inline, false)
	return err
}

// boltBytes is the n bytes at pos from the element at elem of page.
func boltBytes(page []byte, elem uint64, pos, n uint32) ([]byte, error) {
	start := elem + uint64(pos)
	if start > uint64(len(page)) || uint64(n) > uint64(len(page))-start {
		return nil, fmt.Errorf("%d bytes at %d in a page of %d", n, start, len(page))
	}
	return page[start : start+uint64(n)], nil
}
