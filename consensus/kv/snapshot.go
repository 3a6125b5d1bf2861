package kv

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// Magic opens every snapshot. The format, after it:
//
//	bucket*  'B' uvarint(len(name)) name uvarint(count) (uvarint(len(k)) k uvarint(len(v)) v){count}
//	end      'E' crc32c of every byte before it, big endian
//
// Buckets come in name order and keys in key order, so a version always writes the same bytes.
const Magic = "parley-kv 1\n"

// Limits a snapshot's lengths are checked against. Reading never allocates by a length before
// its bytes arrive (see bytes), so these only need to hold whatever a store can contain: a key
// or value is written from one committed log entry, far below 1 GiB (a forwarded entry is at
// most 64 MiB, a leader's own batch at most 512 commands from bounded client frames). WriteTo
// refuses a store that does not fit, rather than write a snapshot that would not read back.
const (
	MaxNameLen  = 255
	MaxKeyLen   = 1 << 30
	MaxValueLen = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// WriteTo writes the transaction's version of every bucket to w.
func (tx *Tx) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: bufio.NewWriterSize(w, 64<<10), crc: crc32.New(castagnoli)}
	cw.write([]byte(Magic))
	var scratch []byte
	for _, name := range tx.bucketNames() {
		t := tx.readTree([]byte(name))
		scratch = append(scratch[:0], 'B')
		scratch = binary.AppendUvarint(scratch, uint64(len(name)))
		scratch = append(scratch, name...)
		scratch = binary.AppendUvarint(scratch, uint64(t.Len()))
		cw.write(scratch)
		t.Ascend(func(e entry) bool {
			if e.klen > MaxKeyLen || e.vlen > MaxValueLen {
				cw.err = fmt.Errorf("bucket %q: a key of %d bytes with a value of %d, beyond what a snapshot holds", name, e.klen, e.vlen)
				return false
			}
			scratch = binary.AppendUvarint(scratch[:0], uint64(e.klen))
			cw.write(scratch)
			cw.write(e.key())
			scratch = binary.AppendUvarint(scratch[:0], uint64(e.vlen))
			cw.write(scratch)
			cw.write(e.value())
			return cw.err == nil
		})
	}
	sum := cw.crc.Sum32()
	cw.write([]byte{'E'})
	cw.write(binary.BigEndian.AppendUint32(nil, sum))
	if cw.err == nil {
		cw.err = cw.w.Flush()
	}
	if cw.err != nil {
		return cw.n, fmt.Errorf("kv: write snapshot: %w", cw.err)
	}
	return cw.n, nil
}

type countingWriter struct {
	w   *bufio.Writer
	crc hash.Hash32
	n   int64
	err error
}

func (c *countingWriter) write(p []byte) {
	if c.err != nil {
		return
	}
	_, _ = c.crc.Write(p)
	var n int
	n, c.err = c.w.Write(p)
	c.n += int64(n)
}

// ErrNotSnapshot is returned by Read for input that does not start with Magic.
var ErrNotSnapshot = errors.New("kv: not a snapshot")

// Read builds a store from a snapshot written by WriteTo. Anything malformed (a short stream,
// keys out of order, a bad checksum, trailing bytes) is an error and no store is returned.
func Read(r io.Reader) (*DB, error) {
	sr := &snapshotReader{r: bufio.NewReaderSize(r, 64<<10), crc: crc32.New(castagnoli)}
	magic := make([]byte, len(Magic))
	if err := sr.full(magic); err != nil || string(magic) != Magic {
		return nil, ErrNotSnapshot
	}
	db := New()
	for {
		tag, err := sr.byte()
		if err != nil {
			return nil, sr.fail("record tag", err)
		}
		switch tag {
		case 'E':
			want := sr.sumBefore
			var got [4]byte
			if err := sr.full(got[:]); err != nil {
				return nil, sr.fail("checksum", err)
			}
			if binary.BigEndian.Uint32(got[:]) != want {
				return nil, errors.New("kv: snapshot checksum mismatch")
			}
			if _, err := sr.r.ReadByte(); err != io.EOF {
				return nil, errors.New("kv: bytes after the end of the snapshot")
			}
			db.sizeKeys.Store(sr.size.Keys)
			db.sizeBytes.Store(sr.size.Bytes)
			db.current.Store(&version{trees: cloneAll(db.trees), size: sr.size})
			return db, nil
		case 'B':
			if err := sr.bucket(db); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("kv: snapshot: unknown record %q", tag)
		}
	}
}

func cloneAll(trees map[string]*tree) map[string]*tree {
	out := make(map[string]*tree, len(trees))
	for name, t := range trees {
		out[name] = t.Clone()
	}
	return out
}

type snapshotReader struct {
	r         *bufio.Reader
	crc       hash.Hash32
	sumBefore uint32 // the checksum of everything before the last tag read
	size      Size   // of the entries read so far
}

func (sr *snapshotReader) fail(what string, err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("kv: snapshot %s: %w", what, err)
}

func (sr *snapshotReader) full(p []byte) error {
	if _, err := io.ReadFull(sr.r, p); err != nil {
		return err
	}
	_, _ = sr.crc.Write(p)
	return nil
}

func (sr *snapshotReader) byte() (byte, error) {
	sr.sumBefore = sr.crc.Sum32()
	b, err := sr.r.ReadByte()
	if err != nil {
		return 0, err
	}
	_, _ = sr.crc.Write([]byte{b})
	return b, nil
}

func (sr *snapshotReader) uvarint(what string, max uint64) (uint64, error) {
	var buf [binary.MaxVarintLen64]byte
	for i := range buf {
		b, err := sr.r.ReadByte()
		if err != nil {
			return 0, sr.fail(what, err)
		}
		buf[i] = b
		if b < 0x80 {
			_, _ = sr.crc.Write(buf[:i+1])
			v, n := binary.Uvarint(buf[:i+1])
			if n <= 0 || v > max {
				return 0, fmt.Errorf("kv: snapshot %s: %d out of range", what, v)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("kv: snapshot %s: varint too long", what)
}

// bytes reads n bytes. Beyond 64 KiB the buffer grows as data arrives rather than trusting n
// up front, so a corrupt length cannot allocate much.
func (sr *snapshotReader) bytes(what string, n uint64) ([]byte, error) {
	if n <= 64<<10 {
		p := make([]byte, n)
		if err := sr.full(p); err != nil {
			return nil, sr.fail(what, err)
		}
		return p, nil
	}
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, sr.r, int64(n)); err != nil {
		return nil, sr.fail(what, err)
	}
	_, _ = sr.crc.Write(buf.Bytes())
	return buf.Bytes(), nil
}

func (sr *snapshotReader) bucket(db *DB) error {
	nameLen, err := sr.uvarint("bucket name length", MaxNameLen)
	if err != nil {
		return err
	}
	name, err := sr.bytes("bucket name", nameLen)
	if err != nil {
		return err
	}
	if _, dup := db.trees[string(name)]; dup || len(name) == 0 {
		return fmt.Errorf("kv: snapshot: bucket %q empty-named or repeated", name)
	}
	count, err := sr.uvarint("key count", 1<<62)
	if err != nil {
		return err
	}
	t := newTree()
	var prev []byte
	for i := uint64(0); i < count; i++ {
		klen, err := sr.uvarint("key length", MaxKeyLen)
		if err != nil {
			return err
		}
		k, err := sr.bytes("key", klen)
		if err != nil {
			return err
		}
		if len(k) == 0 || (i > 0 && bytes.Compare(prev, k) >= 0) {
			return fmt.Errorf("kv: snapshot: bucket %q: keys empty or out of order", name)
		}
		vlen, err := sr.uvarint("value length", MaxValueLen)
		if err != nil {
			return err
		}
		v, err := sr.bytes("value", vlen)
		if err != nil {
			return err
		}
		kv := db.arena.alloc(len(k) + len(v))
		copy(kv, k)
		copy(kv[len(k):], v)
		t.ReplaceOrInsert(newEntry(kv, len(k)))
		sr.size.Keys++
		sr.size.Bytes += int64(len(kv))
		prev = kv[:len(k)]
	}
	db.trees[string(name)] = t
	return nil
}
