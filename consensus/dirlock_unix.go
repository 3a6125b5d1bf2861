//go:build unix

package consensus

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// dirLock is an exclusive flock on dir/LOCK, held while a process uses the directory.
type dirLock struct{ f *os.File }

// lockDir takes the lock, waiting up to wait for another holder to let go.
func lockDir(dir string, wait time.Duration) (*dirLock, error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("consensus: lock %s: %w", dir, err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return &dirLock{f: f}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("consensus: %s is in use by another process: %w", dir, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (l *dirLock) release() {
	if l != nil {
		l.f.Close() // closing the file drops the flock
	}
}
