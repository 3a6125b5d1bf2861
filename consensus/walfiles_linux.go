package consensus

import (
	"os"

	"golang.org/x/sys/unix"
)

// dataSync flushes f's data and the metadata needed to read it back (fdatasync), leaving out
// timestamps: a zeroed segment's appends change nothing else.
//
// raw makes it a raw system call, which Go's scheduler does not see: see segmentFile.Sync for
// why and when.
func dataSync(f *os.File, raw bool) error {
	for {
		var err error
		if raw {
			if _, _, errno := unix.RawSyscall(unix.SYS_FDATASYNC, f.Fd(), 0, 0); errno != 0 {
				err = errno
			}
		} else {
			err = unix.Fdatasync(int(f.Fd()))
		}
		if err != unix.EINTR {
			return err
		}
	}
}
