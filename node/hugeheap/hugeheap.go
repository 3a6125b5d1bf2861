// Package hugeheap backs the Go heap's growth with transparent huge pages on Linux.
//
// A node keeps its whole state in memory (consensus/kv), so its heap grows with every event
// and each new 4 KiB page costs a page fault: on a virtual machine 2-10 µs each, about one
// per event across a 3-node cluster, and 15-20% of a node's CPU in the pipelined cluster row
// (docs/performance.md). Go maps heap memory without asking for huge pages, and where the
// kernel's transparent_hugepage mode is "madvise" (the default of many distributions) it
// then never gets any.
//
// Reserve asks for them ahead: it allocates one large block of fresh heap (in chunks, which
// the runtime maps without touching), marks the block's address range MADV_HUGEPAGE, and lets
// the collector free it. The runtime then carves later allocations out of that range (it reuses
// the lowest free addresses first), and each first touch there maps 2 MiB at once. Nothing
// of the block becomes resident by itself; when the heap outgrows it, further growth gets
// ordinary pages again.
package hugeheap

// DefaultReserve is the address space `parley serve` marks: more than most nodes' state ever
// holds, and only address space until used (Reserve caps it at half the machine's memory).
const DefaultReserve = 4 << 30

// Result says what Reserve did.
type Result struct {
	Mode     string // the kernel's transparent_hugepage mode: always, madvise, never; "" unknown
	Reserved int64  // bytes of heap address space marked for huge pages; 0 if none
	Strict   bool   // skipped: the kernel commits memory strictly (vm.overcommit_memory=2)
}
