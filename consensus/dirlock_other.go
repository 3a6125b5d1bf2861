//go:build !unix

package consensus

import "time"

// dirLock does nothing where flock(2) is missing: there a second process on the same data_dir
// waits on the Raft log's own file lock.
type dirLock struct{}

func lockDir(string, time.Duration) (*dirLock, error) { return &dirLock{}, nil }

func (*dirLock) release() {}
