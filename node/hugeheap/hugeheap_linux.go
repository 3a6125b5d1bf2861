//go:build linux

package hugeheap

import (
	"cmp"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// modeFile holds the kernel's transparent huge page mode, e.g. "always [madvise] never".
const modeFile = "/sys/kernel/mm/transparent_hugepage/enabled"

// overcommitFile holds the kernel's overcommit policy; 2 is strict accounting, under which the
// block (which stays mapped) would count against the commit limit, and its allocation could
// fail, which the Go runtime does not survive.
const overcommitFile = "/proc/sys/vm/overcommit_memory"

// hugePageSize is x86-64's and arm64's (4 KiB base pages) PMD size; madvise is applied to
// the 2 MiB-aligned part of the block only.
const hugePageSize = 2 << 20

// Reserve marks up to size bytes of the heap's next address space for huge pages, capped at
// half the machine's memory (so that the kernel's default, heuristic overcommit check never
// refuses the block). It does nothing on 32-bit systems, where the kernel's mode is "never" or
// unknown, or where memory is committed strictly (Result.Strict). Call it once, early, while
// the heap is small: the block must come from memory never used before, which the runtime
// hands out without zeroing it (and so without touching it).
func Reserve(size int64) (Result, error) {
	strict := false
	if b, err := os.ReadFile(overcommitFile); err == nil {
		strict = strings.TrimSpace(string(b)) == "2"
	}
	return reserve(size, currentMode(), strict)
}

// reserve is Reserve under the given kernel settings.
func reserve(size int64, mode string, strict bool) (Result, error) {
	if !usable(mode) {
		return Result{Mode: mode}, nil
	}
	if strict {
		return Result{Mode: mode, Strict: true}, nil
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err == nil {
		size = min(size, int64(si.Totalram)*int64(si.Unit)/2)
	}
	size = min(size, debug.SetMemoryLimit(-1)/2, maxReserve) // GOMEMLIMIT: the block must not trip it
	if size < 2*hugePageSize {
		return Result{Mode: mode}, nil
	}
	n, err := adviseFreshBlock(size)
	runtime.GC() // frees the block: its range goes back to the runtime's page allocator
	if err != nil {
		return Result{Mode: mode}, fmt.Errorf("hugeheap: madvise: %w", err)
	}
	return Result{Mode: mode, Reserved: n}, nil
}

// reserveChunk is the unit the block is allocated in. The runtime zeroes a large allocation
// whole when any of it lies in address space the heap used before (free pages left by earlier
// garbage); a 4 GiB block that started there was zeroed page by page, 4 KiB first touches
// before it was ever marked, and a node took 18 s to start. In chunks, only those that land
// on used pages are zeroed (no more than the heap's free pages at the time: a few MiB at a
// node's start); the rest come from fresh address space untouched.
const reserveChunk = 4 << 20

// adviseFreshBlock allocates size bytes of heap in chunks, marks the 2 MiB-aligned part of
// each run of adjacent chunks MADV_HUGEPAGE and returns how many bytes it marked; the chunks
// are unreachable once it returns.
//
//go:noinline
func adviseFreshBlock(size int64) (int64, error) {
	chunks := make([][]byte, 0, size/reserveChunk+1)
	for left := size; left > 0; left -= reserveChunk {
		chunks = append(chunks, make([]byte, min(left, reserveChunk)))
	}
	addr := func(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
	slices.SortFunc(chunks, func(a, b []byte) int { return cmp.Compare(addr(a), addr(b)) })
	var marked int64
	for i := 0; i < len(chunks); {
		runBeg, runEnd := addr(chunks[i]), addr(chunks[i])+uintptr(len(chunks[i]))
		for i++; i < len(chunks) && addr(chunks[i]) == runEnd; i++ {
			runEnd += uintptr(len(chunks[i]))
		}
		beg := (runBeg + hugePageSize - 1) &^ (hugePageSize - 1)
		end := runEnd &^ (hugePageSize - 1)
		if end <= beg {
			continue
		}
		// By address: a run spans several allocations, which no Go slice may (checkptr).
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, beg, end-beg, unix.MADV_HUGEPAGE); e != 0 {
			return marked, e
		}
		marked += int64(end - beg)
	}
	runtime.KeepAlive(chunks) // every chunk stays allocated until all are marked
	return marked, nil
}

// usable reports whether huge pages can be asked for under mode on this system: the kernel
// hands them out (always, madvise) and the address space is 64-bit (a 32-bit process has no
// room for the block).
func usable(mode string) bool {
	return (mode == "always" || mode == "madvise") && unsafe.Sizeof(uintptr(0)) == 8
}

// currentMode is the bracketed word of modeFile, or "" when it cannot be read.
func currentMode() string {
	b, err := os.ReadFile(modeFile)
	if err != nil {
		return ""
	}
	return parseMode(string(b))
}

func parseMode(s string) string {
	for _, w := range strings.Fields(s) {
		if strings.HasPrefix(w, "[") && strings.HasSuffix(w, "]") {
			return strings.Trim(w, "[]")
		}
	}
	return ""
}
