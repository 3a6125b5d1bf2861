package main

import "github.com/prometheus/procfs"

// readMachineCPU reads /proc/stat.
func readMachineCPU() (machineCPU, bool) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return machineCPU{}, false
	}
	return readMachineCPUFrom(fs)
}

// readMachineCPUFrom reads the stat file of the proc filesystem fs.
func readMachineCPUFrom(fs procfs.FS) (machineCPU, bool) {
	st, err := fs.Stat()
	if err != nil {
		return machineCPU{}, false
	}
	c := st.CPUTotal
	return machineCPU{busy: c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ, idle: c.Idle + c.Iowait, steal: c.Steal}, true
}
