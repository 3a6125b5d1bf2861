package main

import "os"

// readMachineCPU reads /proc/stat.
func readMachineCPU() (machineCPU, bool) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineCPU{}, false
	}
	m, err := parseProcStat(data)
	return m, err == nil
}
