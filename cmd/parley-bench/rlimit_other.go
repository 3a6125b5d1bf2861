//go:build !(linux || darwin || freebsd)

package main

// raiseFileLimit is a no-op where RLIMIT_NOFILE does not exist; a large
// limit is assumed.
func raiseFileLimit() (soft, hard uint64, err error) { return 1 << 20, 1 << 20, nil }
