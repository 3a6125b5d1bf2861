//go:build race

package hugeheap

// maxReserve caps Reserve under the race detector, which maps and clears shadow memory for the
// block as it is allocated: 4 GiB took a node half a minute to start.
const maxReserve = 256 << 20

// raceEnabled: built with the race detector.
const raceEnabled = true
