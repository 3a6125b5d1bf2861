//go:build !race

package hugeheap

// maxReserve caps Reserve; see race.go.
const maxReserve = 1 << 62

// raceEnabled: built with the race detector.
const raceEnabled = false
