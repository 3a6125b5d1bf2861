package main

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	data := []byte("cpu  100 5 50 800 20 3 2 40 7 0\ncpu0 50 2 25 400 10 1 1 20 3 0\nintr 1 2 3\n")
	m, err := parseProcStat(data)
	if err != nil {
		t.Fatal(err)
	}
	// busy: user+nice+system+irq+softirq; idle: idle+iowait; guest is inside user already.
	if want := (machineCPU{busy: 160, idle: 820, steal: 40}); m != want {
		t.Fatalf("parsed %+v, want %+v", m, want)
	}
	// A kernel without the steal column (before 2.6.11) still parses.
	m, err = parseProcStat([]byte("cpu 1 2 3 4 5 6 7\n"))
	if err != nil || m != (machineCPU{busy: 1 + 2 + 3 + 6 + 7, idle: 4 + 5}) {
		t.Fatalf("short line: %+v, %v", m, err)
	}
	for _, bad := range []string{"", "intr 1 2\n", "cpu 1 2\n", "cpu 1 x 3 4 5\n", "cpu 1 2 3 -4 5\n"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("%q: parsed without an error", bad)
		}
	}
}

func TestMachineCountReportsShares(t *testing.T) {
	c := machineCount{ok: true, before: machineCPU{busy: 100, idle: 100, steal: 0},
		after: machineCPU{busy: 250, idle: 130, steal: 20}} // 150 busy, 30 idle, 20 stolen of 200
	rep := newReport("cluster", time.Now(), nil)
	c.report(rep)
	busy, ok1 := rep.Metric("machine_busy_pct")
	steal, ok2 := rep.Metric("machine_steal_pct")
	if !ok1 || !ok2 || busy.Value != 75 || steal.Value != 10 {
		t.Fatalf("busy %+v (%v), steal %+v (%v); want 75%% and 10%%", busy, ok1, steal, ok2)
	}
	if len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "/proc/stat") {
		t.Fatalf("notes %q", rep.Notes)
	}
	// An idle count that went backwards (iowait can) is 0, not 2^64 - 1.
	back := machineCount{ok: true, before: machineCPU{busy: 100, idle: 100}, after: machineCPU{busy: 200, idle: 90}}
	rep = newReport("cluster", time.Now(), nil)
	back.report(rep)
	if busy, _ := rep.Metric("machine_busy_pct"); busy.Value != 100 {
		t.Fatalf("busy %v%% with the idle count going backwards, want 100%%", busy.Value)
	}
	// Nothing read (another OS, or /proc/stat unreadable): no rows, no note.
	none := newReport("cluster", time.Now(), nil)
	(&machineCount{}).report(none)
	if len(none.Results) != 0 || len(none.Notes) != 0 {
		t.Fatalf("unmeasured count reported %+v %q", none.Results, none.Notes)
	}
}

func TestReadMachineCPUMovesForward(t *testing.T) {
	var c machineCount
	c.start()
	if runtime.GOOS != "linux" {
		t.Skip("readMachineCPU reads /proc/stat, on Linux only")
	}
	if !c.ok {
		t.Fatal("/proc/stat could not be read")
	}
	// The kernel counts in ticks (10 ms at 100 Hz): keep a core busy until one has passed.
	deadline := time.Now().Add(2 * time.Second)
	for spin := 0; time.Now().Before(deadline); spin++ {
		if spin%1_000_000 == 0 {
			if c.stop(); c.after.total() > c.before.total() {
				break
			}
		}
	}
	if !c.ok || c.after.total() <= c.before.total() || c.after.busy < c.before.busy {
		t.Fatalf("before %+v after %+v: no time counted in 2 s of spinning", c.before, c.after)
	}
}
