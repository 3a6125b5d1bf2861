package main

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/procfs"
)

// procWith is a proc filesystem whose stat file holds stat.
func procWith(t *testing.T, stat string) procfs.FS {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	fs, err := procfs.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestReadMachineCPUFromProcStat(t *testing.T) {
	// In ticks of 1/100 s: user nice system idle iowait irq softirq steal guest guest_nice.
	m, ok := readMachineCPUFrom(procWith(t, "cpu  100 5 50 800 20 3 2 40 7 0\ncpu0 50 2 25 400 10 1 1 20 3 0\nintr 1 2 3\nbtime 1\n"))
	// busy: user+nice+system+irq+softirq; idle: idle+iowait; guest is inside user already.
	if !ok || math.Abs(m.busy-1.6) > 1e-9 || math.Abs(m.idle-8.2) > 1e-9 || math.Abs(m.steal-0.4) > 1e-9 {
		t.Fatalf("read %+v (%v), want busy 1.6 s, idle 8.2 s, steal 0.4 s", m, ok)
	}
	// A kernel without the steal column (before 2.6.11) still reads.
	m, ok = readMachineCPUFrom(procWith(t, "cpu 1 2 3 4 5 6 7\n"))
	if !ok || math.Abs(m.busy-0.19) > 1e-9 || math.Abs(m.idle-0.09) > 1e-9 || m.steal != 0 {
		t.Fatalf("short line: %+v (%v)", m, ok)
	}
	if m, ok := readMachineCPUFrom(procWith(t, "cpu 1 x 3 4 5\n")); ok {
		t.Errorf("a field that is not a number: read %+v without an error", m)
	}
	if _, ok := readMachineCPUFrom(procfs.FS{}); ok {
		t.Error("a proc filesystem without a stat file read")
	}
}
