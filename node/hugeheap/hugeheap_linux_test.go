//go:build linux

package hugeheap

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

func TestParseMode(t *testing.T) {
	for in, want := range map[string]string{
		"always [madvise] never\n": "madvise",
		"[always] madvise never":   "always",
		"always madvise [never]":   "never",
		"":                         "",
		"always madvise never":     "",
	} {
		if got := parseMode(in); got != want {
			t.Errorf("parseMode(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReserveMarksTheHeapsNextMemory: after Reserve, memory the heap hands out lies in a
// mapping the kernel may back with huge pages (THPeligible), and touching it gets some.
// Where the kernel's mode is "never", Reserve must leave the heap alone.
func TestReserveMarksTheHeapsNextMemory(t *testing.T) {
	r, err := Reserve(128 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if !usable(r.Mode) {
		if r.Reserved != 0 {
			t.Fatalf("mode %q, %d-bit: reserved %d bytes", r.Mode, 8*unsafe.Sizeof(uintptr(0)), r.Reserved)
		}
		t.Logf("transparent huge pages are %q here, %d-bit: nothing to reserve", r.Mode, 8*unsafe.Sizeof(uintptr(0)))
		return
	}
	if r.Reserved < 64<<20 {
		t.Fatalf("reserved %d bytes of 128 MiB", r.Reserved)
	}
	// The heap's next allocations: small blocks, as the state store makes them, touched.
	blocks := make([][]byte, 0, 512)
	for range 512 {
		b := make([]byte, 64<<10)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		blocks = append(blocks, b)
	}
	last := uintptr(unsafe.Pointer(unsafe.SliceData(blocks[len(blocks)-1])))
	eligible, huge := smapsFor(t, last)
	if !eligible {
		t.Fatalf("the heap's memory at %#x is not eligible for huge pages after Reserve", last)
	}
	t.Logf("mapping of the heap's new memory: %d KiB in huge pages", huge)
	if huge == 0 {
		t.Error("32 MiB touched in the reserved range, none of it in huge pages")
	}
}

// TestReserveLeavesTheHeapAloneWhereItMust: with huge pages off, or memory committed strictly
// (where the block would count against the commit limit for good), nothing is allocated.
func TestReserveLeavesTheHeapAloneWhereItMust(t *testing.T) {
	for _, tc := range []struct {
		mode   string
		strict bool
	}{{"never", false}, {"", false}, {"madvise", true}, {"always", true}} {
		r, err := reserve(1<<30, tc.mode, tc.strict)
		if err != nil || r.Reserved != 0 || r.Strict != tc.strict || r.Mode != tc.mode {
			t.Errorf("reserve(mode %q, strict %v) = %+v, %v; want nothing reserved", tc.mode, tc.strict, r, err)
		}
	}
}

// smapsFor reads /proc/self/smaps for the mapping that holds addr: whether it is eligible
// for transparent huge pages and how many KiB of it are in them.
func smapsFor(t *testing.T, addr uintptr) (eligible bool, hugeKiB int64) {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in, found := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(fields[0], "-"); ok && !strings.HasSuffix(fields[0], ":") {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil && uint64(addr) >= a && uint64(addr) < b
			found = found || in
			continue
		}
		if !in || len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "THPeligible:":
			eligible = fields[1] == "1"
		case "AnonHugePages:":
			hugeKiB, _ = strconv.ParseInt(fields[1], 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("no mapping holds %#x", addr)
	}
	return eligible, hugeKiB
}

// TestReserveLeavesTheBlockUntouched: the heap's free pages that were used before (here, a
// touched and collected 16 MiB buffer) must not make the runtime zero the whole block, which
// would make it resident page by page: a node once took 18 s to start that way, 4 GiB of
// 4 KiB first touches before the block was even marked. Only chunks on those used pages may
// be zeroed (resident again if the scavenger had released them meanwhile).
func TestReserveLeavesTheBlockUntouched(t *testing.T) {
	if !usable(currentMode()) {
		t.Skipf("transparent huge pages are %q here: Reserve does nothing", currentMode())
	}
	used := make([]byte, 16<<20)
	for i := 0; i < len(used); i += 4096 {
		used[i] = 1
	}
	runtime.KeepAlive(used) // its last use: the collection below frees it
	runtime.GC()
	before := residentKiB(t)
	r, err := Reserve(1 << 30)
	if err != nil {
		t.Fatal(err)
	}
	grew := residentKiB(t) - before
	t.Logf("reserved %d MiB; resident memory grew by %d KiB", r.Reserved>>20, grew)
	limit := r.Reserved >> 10 / 4 // KiB; zeroing the block made all of it resident
	if raceEnabled {
		limit = r.Reserved >> 10 * 3 / 4 // the detector's shadow memory for the block (about 0.4×) is resident too
	}
	if grew > limit {
		t.Errorf("Reserve made %d KiB of its %d KiB resident: the block was touched", grew, r.Reserved>>10)
	}
}

// residentKiB is this process's VmRSS.
func residentKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}
