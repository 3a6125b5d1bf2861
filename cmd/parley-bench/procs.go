package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/stats"
)

// A conns run with --procs P > 1 re-executes this binary P times as
// `parley-bench conns --child …`. Parent and child talk in JSON lines:
//
//	parent → child stdin:  connShare            (which connections, with tokens)
//	child → parent stdout: {"type":"progress"}  (every 500 ms while connecting)
//	                       {"type":"connected"} (connect phase over: counts, histogram)
//	parent → child stdin:  "release"            (or EOF: close the connections)
//	child → parent stdout: {"type":"done"}      (connections dropped while held)
//
// The child's stderr is the parent's.

// childEnv is set in every child's environment; tests use it to run the
// test binary as parley-bench.
const childEnv = "PARLEY_BENCH_CHILD"

type childMsg struct {
	Type         string           `json:"type"`
	OK           int64            `json:"ok"`
	Failed       int64            `json:"failed"`
	NotAttempted int64            `json:"not_attempted,omitempty"`
	DialS        float64          `json:"dial_s,omitempty"`
	Errors       map[string]int64 `json:"errors,omitempty"`
	Connect      *stats.Snapshot  `json:"connect,omitempty"`
	Dropped      int64            `json:"dropped,omitempty"`
	DropErrors   map[string]int64 `json:"drop_errors,omitempty"`
}

type child struct {
	idx       int
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	ok        atomic.Int64
	failed    atomic.Int64
	connected chan childMsg // one message, or closed on exit without it
	done      chan childMsg
	readerEnd chan struct{}
}

// childArgs are the flags a child needs; it registers nobody.
func childArgs(o *options, conns, dialConc int) []string {
	return []string{"conns", "--child", "--quiet",
		"--addr", o.addr,
		"--tls=" + strconv.FormatBool(o.tls),
		"--insecure=" + strconv.FormatBool(o.insecure),
		"--token-in-query=" + strconv.FormatBool(o.tokenInQuery),
		"--source-ips", o.sourceIPs,
		"--conns", strconv.Itoa(conns),
		"--conns-per-user", strconv.Itoa(o.connsPerUser),
		"--dial-concurrency", strconv.Itoa(dialConc),
		"--duration", o.duration.String(),
		"--hold", o.hold.String(),
		"--settle", o.settle.String(),
		"--timeout", o.timeout.String(),
		"--setup-timeout", o.setupTimeout.String(),
		"--user-prefix", o.userPrefix,
	}
}

// childReleaseBound is how long a child waits for "release" at most.
func childReleaseBound(o *options) time.Duration {
	return o.duration + o.settle + o.hold + 2*o.timeout + 30*time.Second
}

// runConnsProcs spreads the connections over procs child processes.
// afterConnect runs once every child has finished connecting.
func runConnsProcs(ctx context.Context, e *env, procs int, tokens []string, afterConnect func(open func() int64)) (*connsOutcome, error) {
	o := e.opt
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("--procs: cannot find own executable: %w", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()

	children := make([]*child, 0, procs)
	defer func() {
		// Whatever happened: release, then reap every child.
		for _, c := range children {
			_ = c.stdin.Close()
		}
		for _, c := range children {
			<-c.readerEnd
			_ = c.cmd.Wait()
		}
	}()
	per := ceilDiv(o.conns, procs)
	for i := 0; i < procs; i++ {
		lo, hi := i*per, min((i+1)*per, o.conns)
		if lo >= hi {
			break
		}
		share := connShare{Lo: lo, Hi: hi, FirstUser: lo / o.connsPerUser,
			Tokens: tokens[lo/o.connsPerUser : (hi-1)/o.connsPerUser+1]}
		c, err := startChild(cctx, e, exe, i, share, max(1, o.dialConc/procs))
		if err != nil {
			return nil, fmt.Errorf("child %d: %w", i, err)
		}
		children = append(children, c)
	}

	e.prog.Phase(fmt.Sprintf("conns connect ×%d", len(children)), func() progressState {
		var ok, failed int64
		for _, c := range children {
			ok += c.ok.Load()
			failed += c.failed.Load()
		}
		return progressState{Done: ok + failed, Total: int64(o.conns), Detail: fmt.Sprintf("ok %d failed %d", ok, failed)}
	})
	out := newConnsOutcome()
	bound := time.NewTimer(o.duration + o.timeout + 30*time.Second)
	defer bound.Stop()
	var lost int
	for _, c := range children {
		select {
		case m, ok := <-c.connected:
			if !ok {
				lost++
				continue
			}
			out.ok += m.OK
			out.failed += m.Failed
			out.notAttempted += m.NotAttempted
			out.dialSeconds = max(out.dialSeconds, m.DialS)
			out.errs.merge(m.Errors)
			if m.Connect != nil {
				out.connect.MergeSnapshot(*m.Connect)
			}
		case <-bound.C:
			return nil, errors.New("children did not finish connecting in time")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if lost == len(children) {
		return nil, errors.New("every child process exited before connecting (see its errors above)")
	}
	if lost > 0 {
		out.errs.addKey("child process exited early", int64(lost))
	}
	afterConnect(func() int64 { return out.ok }) // children do not report drops until release
	var reported atomic.Int64
	e.prog.Phase("conns close", func() progressState {
		return progressState{Done: reported.Load(), Total: int64(len(children)), Detail: "processes done"}
	})
	for _, c := range children {
		_, _ = io.WriteString(c.stdin, "release\n")
		_ = c.stdin.Close()
	}
	for _, c := range children {
		select {
		case m, ok := <-c.done:
			if ok {
				out.dropped += m.Dropped
				out.dropErrs.merge(m.DropErrors)
			}
			reported.Add(1)
		case <-time.After(o.timeout + 10*time.Second):
			out.errs.addKey("child process did not report after release", 1)
		}
	}
	return out, nil
}

func startChild(ctx context.Context, e *env, exe string, idx int, share connShare, dialConc int) (*child, error) {
	cmd := exec.CommandContext(ctx, exe, childArgs(e.opt, share.Hi-share.Lo, dialConc)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = e.stderr
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{idx: idx, cmd: cmd, stdin: stdin,
		connected: make(chan childMsg, 1), done: make(chan childMsg, 1), readerEnd: make(chan struct{})}
	go c.read(stdout)
	b, _ := json.Marshal(share)
	if _, err := stdin.Write(append(b, '\n')); err != nil {
		_ = stdin.Close()
		<-c.readerEnd
		_ = cmd.Wait()
		return nil, fmt.Errorf("sending its share: %w", err)
	}
	return c, nil
}

// read consumes the child's stdout until EOF.
func (c *child) read(r io.Reader) {
	defer close(c.readerEnd)
	defer close(c.done)
	connectedSent := false
	defer func() {
		if !connectedSent {
			close(c.connected)
		}
	}()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		var m childMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			continue
		}
		switch m.Type {
		case "progress":
			c.ok.Store(m.OK)
			c.failed.Store(m.Failed)
		case "connected":
			c.ok.Store(m.OK)
			c.failed.Store(m.Failed)
			if !connectedSent {
				c.connected <- m
				close(c.connected)
				connectedSent = true
			}
		case "done":
			select {
			case c.done <- m:
			default:
			}
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// runConnsChild is the child side: read the share, connect, report, hold
// until released, close, report.
func runConnsChild(ctx context.Context, e *env) error {
	o := e.opt
	in := bufio.NewReader(e.stdin)
	line, err := in.ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return fmt.Errorf("child: reading the share: %w", err)
	}
	var share connShare
	if err := json.Unmarshal(line, &share); err != nil {
		return fmt.Errorf("child: bad share: %w", err)
	}
	if share.Hi-share.Lo != o.conns || share.Lo < 0 || len(share.Tokens) == 0 ||
		(share.Hi-1)/o.connsPerUser-share.FirstUser >= len(share.Tokens) || share.Lo/o.connsPerUser < share.FirstUser {
		return fmt.Errorf("child: inconsistent share [%d,%d) with %d tokens", share.Lo, share.Hi, len(share.Tokens))
	}
	var wmu sync.Mutex
	emit := func(m childMsg) {
		b, _ := json.Marshal(m)
		wmu.Lock()
		defer wmu.Unlock()
		_, _ = e.stdout.Write(append(b, '\n'))
	}

	d := newConnDialer(e, e.target(o.addr), share)
	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				emit(childMsg{Type: "progress", OK: d.ok.Load(), Failed: d.failed.Load()})
			}
		}
	}()
	d.dialAll(ctx, o.duration, o.dialConc)
	close(stopProgress)
	pwg.Wait()
	snap := d.out.connect.Snapshot()
	emit(childMsg{Type: "connected", OK: d.out.ok, Failed: d.out.failed, NotAttempted: d.out.notAttempted,
		DialS: d.out.dialSeconds, Errors: d.out.errs.snapshot(), Connect: &snap})

	released := make(chan struct{})
	go func() { // ends at "release" or EOF, which the parent always sends
		defer close(released)
		_, _ = in.ReadString('\n')
	}()
	t := time.NewTimer(childReleaseBound(o))
	select {
	case <-released:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	d.countDropped()
	closeAll(d.conns, nil)
	emit(childMsg{Type: "done", Dropped: d.out.dropped, DropErrors: d.out.dropErrs.snapshot()})
	return nil
}

func describeSourceIPs(ips []net.IP) string {
	if len(ips) == 0 {
		return "kernel's choice"
	}
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}
