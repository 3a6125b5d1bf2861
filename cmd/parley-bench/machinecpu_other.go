//go:build !linux

package main

// readMachineCPU is not measured here: no /proc/stat.
func readMachineCPU() (machineCPU, bool) { return machineCPU{}, false }
