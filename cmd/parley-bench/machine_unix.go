//go:build linux || darwin || freebsd

package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/stats"
)

// probeMachine measures each primitive in turn, checking ctx between them.
func probeMachine(ctx context.Context, dir string) (machineCosts, error) {
	var c machineCosts
	var err error
	c.syscall = probeSyscall()
	if err := ctx.Err(); err != nil {
		return c, err
	}
	if c.pageFault, err = probePageFault(); err != nil {
		return c, err
	}
	if err := ctx.Err(); err != nil {
		return c, err
	}
	if c.roundTrip, err = probeRoundTrip(); err != nil {
		return c, err
	}
	if err := ctx.Err(); err != nil {
		return c, err
	}
	c.fsync, err = probeFsync(dir)
	return c, err
}

func probeSyscall() time.Duration {
	start := time.Now()
	for range probeSyscalls {
		syscall.Getpid()
	}
	return time.Since(start) / probeSyscalls
}

// probePageFault maps fresh anonymous memory and writes one byte to each page.
func probePageFault() (time.Duration, error) {
	page := os.Getpagesize()
	mem, err := syscall.Mmap(-1, 0, probePages*page, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return 0, fmt.Errorf("page-fault probe: mmap: %w", err)
	}
	defer syscall.Munmap(mem)
	start := time.Now()
	for i := 0; i < len(mem); i += page {
		mem[i] = 1
	}
	return time.Since(start) / probePages, nil
}

// probeRoundTrip bounces a byte between two goroutines, each locked to its own thread, over
// two pipes: every crossing wakes the other thread, as a node's goroutines wake each other.
func probeRoundTrip() (time.Duration, error) {
	r1, w1, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("wake-up probe: %w", err)
	}
	r2, w2, err := os.Pipe()
	if err != nil {
		r1.Close()
		w1.Close()
		return 0, fmt.Errorf("wake-up probe: %w", err)
	}
	done := make(chan struct{})
	go func() { // the echo: ends when w1 is closed
		defer close(done)
		defer r1.Close()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		b := make([]byte, 1)
		for {
			if _, err := r1.Read(b); err != nil {
				return
			}
			if _, err := w2.Write(b); err != nil {
				return
			}
		}
	}()
	defer func() {
		w1.Close()
		<-done
		r2.Close()
		w2.Close()
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := make([]byte, 1)
	start := time.Now()
	for range probeRoundTrips {
		if _, err := w1.Write(b); err != nil {
			return 0, fmt.Errorf("wake-up probe: %w", err)
		}
		if _, err := r2.Read(b); err != nil {
			return 0, fmt.Errorf("wake-up probe: %w", err)
		}
	}
	return time.Since(start) / probeRoundTrips, nil
}

// probeFsync writes 4 KiB at successive offsets of a new file in dir and fsyncs each, as a
// Raft log append does.
func probeFsync(dir string) (*stats.Histogram, error) {
	f, err := os.CreateTemp(dir, "parley-bench-fsync-*")
	if err != nil {
		return nil, fmt.Errorf("fsync probe: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := stats.New()
	block := make([]byte, 4096)
	for i := range probeFsyncs {
		start := time.Now()
		if _, err := f.WriteAt(block, int64(i)*int64(len(block))); err != nil {
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
		h.Record(time.Since(start).Nanoseconds())
	}
	return h, nil
}
