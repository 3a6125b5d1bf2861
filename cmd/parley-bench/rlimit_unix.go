//go:build linux || darwin || freebsd

package main

import "syscall"

// raiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit and
// returns the resulting (soft, hard) pair.
func raiseFileLimit() (soft, hard uint64, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, err
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
			lim = want
		} else if err2 := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err2 != nil {
			return 0, 0, err2
		}
	}
	return uint64(lim.Cur), uint64(lim.Max), nil
}
