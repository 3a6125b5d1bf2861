//go:build !linux

package hugeheap

// Reserve does nothing outside Linux: there is no transparent huge page madvise to ask for.
func Reserve(size int64) (Result, error) { return Result{}, nil }
