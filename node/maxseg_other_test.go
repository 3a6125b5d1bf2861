//go:build !linux

package node

const canLimitSegment = false

func setMaxSegment(uintptr, int) {}
