package main

import (
	"math"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestMachineCountReportsShares(t *testing.T) {
	c := machineCount{ok: true, before: machineCPU{busy: 1, idle: 1, steal: 0},
		after: machineCPU{busy: 2.5, idle: 1.3, steal: 0.2}} // 1.5 s busy, 0.3 idle, 0.2 stolen of 2
	rep := newReport("cluster", time.Now(), nil)
	c.report(rep)
	busy, ok1 := rep.Metric("machine_busy_pct")
	steal, ok2 := rep.Metric("machine_steal_pct")
	if !ok1 || !ok2 || math.Abs(busy.Value-75) > 1e-9 || math.Abs(steal.Value-10) > 1e-9 {
		t.Fatalf("busy %+v (%v), steal %+v (%v); want 75%% and 10%%", busy, ok1, steal, ok2)
	}
	if len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "/proc/stat") {
		t.Fatalf("notes %q", rep.Notes)
	}
	// An idle count that went backwards (iowait can) is 0, not negative.
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
