//go:build !linux

package consensus

import "os"

// dataSync is fsync where fdatasync is not available; raw is a Linux refinement.
func dataSync(f *os.File, raw bool) error { return f.Sync() }
