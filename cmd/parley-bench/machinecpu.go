package main

// machineCPU is this machine's CPU time in seconds, all processes and cores together, from
// the aggregate "cpu" line of /proc/stat. Over a send phase it says whether the machine was
// saturated (idle near 0: the rate is bound by the CPU, whoever used it) and how much the
// hypervisor took (steal: a VM host's drift, which moves every figure).
type machineCPU struct {
	busy  float64 // user, nice, system, irq, softirq (guest time is inside user and nice)
	idle  float64 // idle and iowait
	steal float64
}

// sub is the time that passed from before to m. A counter that went backwards (iowait can,
// on some kernels) counts as 0.
func (m machineCPU) sub(before machineCPU) machineCPU {
	return machineCPU{busy: max(m.busy-before.busy, 0), idle: max(m.idle-before.idle, 0), steal: max(m.steal-before.steal, 0)}
}

func (m machineCPU) total() float64 { return m.busy + m.idle + m.steal }

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
	pct := func(seconds float64) float64 { return 100 * seconds / d.total() }
	rep.metric("machine_busy_pct", "this machine's CPU busy (all processes, send phase)", pct(d.busy), "%")
	rep.metric("machine_steal_pct", "this machine's CPU taken by its hypervisor (steal, send phase)", pct(d.steal), "%")
	rep.addNote("machine CPU: /proc/stat over the send phase, every process on every core of the load tool's machine; near 100%% busy, the CPU bounds the run (with the nodes on this machine, theirs and the tool's together); steal is time the hypervisor gave to others")
}
