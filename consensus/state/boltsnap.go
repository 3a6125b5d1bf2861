package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

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
func readBoltSnapshot(r io.Reader) (*kv.DB, error) {
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
	old, err := bolt.Open(f.Name(), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("bbolt snapshot: open: %w", err)
	}
	defer old.Close()
	db := kv.New()
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
