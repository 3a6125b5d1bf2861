//go:build !(linux || darwin || freebsd)

package main

import "time"

// ownCPU is not measured here.
func ownCPU() (time.Duration, bool) { return 0, false }
