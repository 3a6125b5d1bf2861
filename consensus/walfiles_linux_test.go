package consensus

import (
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux's FIEMAP ioctl, which x/sys/unix does not define: the file's extents, each flagged
// unwritten when its blocks are allocated but never written (as fallocate leaves them).
const (
	fsIocFiemap           = 0xC020660B
	fiemapExtentUnwritten = 0x800
	fiemapHeaderSize      = 32
	fiemapExtentSize      = 56
	fiemapMaxExtents      = 64
)

// unwrittenExtents counts the extents of path that are allocated but unwritten.
func unwrittenExtents(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, fiemapHeaderSize+fiemapMaxExtents*fiemapExtentSize)
	binary.NativeEndian.PutUint64(buf[8:], ^uint64(0))        // fm_length: the whole file
	binary.NativeEndian.PutUint32(buf[24:], fiemapMaxExtents) // fm_extent_count
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
		t.Fatalf("FIEMAP on %s: %v (the test needs a file system that maps extents, as ext4 and xfs do)", path, errno)
	}
	mapped := int(binary.NativeEndian.Uint32(buf[20:]))
	n := 0
	for i := range min(mapped, fiemapMaxExtents) {
		flags := binary.NativeEndian.Uint32(buf[fiemapHeaderSize+i*fiemapExtentSize+40:])
		if flags&fiemapExtentUnwritten != 0 {
			n++
		}
	}
	return n
}

// A new segment's blocks are written before raft-wal appends to it, so an append's sync has
// no extents to convert; a fallocated file, as raft-wal makes by itself, is all unwritten.
func TestSegmentBlocksAreWrittenBeforeUse(t *testing.T) {
	dir := t.TempDir()
	fallocated := filepath.Join(dir, "fallocated")
	f, err := os.Create(fallocated)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, testSegmentSize); err != nil {
		t.Fatalf("fallocate: %v", err)
	}
	f.Close()
	if unwrittenExtents(t, fallocated) == 0 {
		t.Fatal("a fallocated file shows no unwritten extents: this file system cannot tell them apart")
	}
	fs, err := newSegmentFS(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	for _, name := range []string{"a.wal", "b.wal"} { // the first zeroed on the spot, the second the spare
		if name == "b.wal" {
			waitSpare(t, dir, testSegmentSize)
		}
		seg, err := fs.Create(dir, name, testSegmentSize)
		if err != nil {
			t.Fatal(err)
		}
		seg.Close()
		if n := unwrittenExtents(t, filepath.Join(dir, name)); n != 0 {
			t.Fatalf("segment %s has %d unwritten extents", name, n)
		}
	}
}
