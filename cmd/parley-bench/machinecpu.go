package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// machineCPU is this machine's CPU time, all processes and cores together, in the kernel's
// clock ticks, from the first line of /proc/stat. Over a send phase it says whether the
// machine was saturated (idle near 0: the rate is bound by the CPU, whoever used it) and how
// much the hypervisor took (steal: a VM host's drift, which moves every figure).
type machineCPU struct {
	busy  uint64 // user, nice, system, irq, softirq (guest time is inside user and nice)
	idle  uint64 // idle and iowait
	steal uint64
}

// sub is the time that passed from before to m. A counter that went backwards (iowait can,
// on some kernels) counts as 0, not as a wrapped-around huge value.
func (m machineCPU) sub(before machineCPU) machineCPU {
	since := func(now, then uint64) uint64 {
		if now < then {
			return 0
		}
		return now - then
	}
	return machineCPU{busy: since(m.busy, before.busy), idle: since(m.idle, before.idle), steal: since(m.steal, before.steal)}
}

func (m machineCPU) total() uint64 { return m.busy + m.idle + m.steal }

// parseProcStat reads the aggregate "cpu" line of /proc/stat. Kernels before 2.6.11 have no
// steal column; it then stays 0.
func parseProcStat(data []byte) (machineCPU, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) == 0 || string(f[0]) != "cpu" {
			continue
		}
		if len(f) < 5 {
			return machineCPU{}, fmt.Errorf("/proc/stat: cpu line has %d fields", len(f))
		}
		var v [8]uint64 // user nice system idle iowait irq softirq steal
		for i := 1; i < len(f) && i <= len(v); i++ {
			n, err := strconv.ParseUint(string(f[i]), 10, 64)
			if err != nil {
				return machineCPU{}, fmt.Errorf("/proc/stat: cpu field %d: %w", i, err)
			}
			v[i-1] = n
		}
		return machineCPU{busy: v[0] + v[1] + v[2] + v[5] + v[6], idle: v[3] + v[4], steal: v[7]}, nil
	}
	return machineCPU{}, errors.New("/proc/stat: no cpu line")
}

// machineCount reads this machine's CPU time around a send phase.
type machineCount struct {
	before, after machineCPU
	ok            bool
}

func (c *machineCount) start() { c.before, c.ok = readMachineCPU() }

func (c *machineCount) stop() {
	var ok bool
	c.after, ok = readMachineCPU()
	c.ok = c.ok && ok
}

// report adds the busy and stolen shares of the machine's CPU time over the send phase.
func (c *machineCount) report(rep *Report) {
	if !c.ok {
		return
	}
	d := c.after.sub(c.before)
	if d.total() == 0 {
		return
	}
	pct := func(n uint64) float64 { return 100 * float64(n) / float64(d.total()) }
	rep.metric("machine_busy_pct", "this machine's CPU busy (all processes, send phase)", pct(d.busy), "%")
	rep.metric("machine_steal_pct", "this machine's CPU taken by its hypervisor (steal, send phase)", pct(d.steal), "%")
	rep.addNote("machine CPU: /proc/stat over the send phase, every process on every core of the load tool's machine; near 100%% busy, the CPU bounds the run (with the nodes on this machine, theirs and the tool's together); steal is time the hypervisor gave to others")
}
