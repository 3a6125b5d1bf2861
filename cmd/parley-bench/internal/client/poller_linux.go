//go:build linux

package client

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// A goroutine per subscriber costs, for every pushed frame, two read(2) calls (the data,
// then EAGAIN before parking), a park and a wake-up and the runtime's netpoll work; with
// thousands of subscribers that is most of the load tool's CPU, on a machine it shares with
// the node it measures. A Poller instead serves many connections from a few epoll loops (as
// gnet and nbio do): level-triggered EPOLLIN|EPOLLRDHUP, one read per ready connection into
// the loop's buffer, the frames parsed in place (wsParser), the events decoded with one
// event reader per loop, on the loop goroutine's stack.
//
// A loop does not sleep in an epoll_wait of its own: the sockets stay in the runtime's
// poller too (they are net.Conns), which wakes a thread for them anyway, and a second
// sleeping thread per loop tripled the context switches (8% more CPU, latency scenario).
// Instead the loop's epoll descriptor is itself in the runtime's poller (an epoll
// descriptor is readable while one of its sockets is ready): the loop asks with a
// non-blocking epoll_wait, and parks its goroutine when nothing is ready.
//
// Every raw read and every epoll_ctl runs inside the socket's RawConn.Control, which holds
// Go's reference on the descriptor: it cannot be closed, and its number reused, meanwhile.
// A connection leaves its loop (EPOLL_CTL_DEL and out of the loop's table) before its
// socket is closed, on every path: Close, Abort, a failed write, the end the loop itself
// sees (close frame, EOF, reset, bad frame) and Poller.Close.

// pollReadSize is each loop's read buffer: the node gathers a connection's queued frames
// into one write, and a buffer that holds a whole batch reads it in one call.
const pollReadSize = 64 << 10

// Poller reads connections' frames with runtime.GOMAXPROCS(0) epoll loops, each served by
// one goroutine. Connections are given to the loops in turn (DialOptions.Poller). Close
// stops the loops and ends the connections they still serve.
type Poller struct {
	loops []*pollLoop
	next  atomic.Uint32
	stop  atomic.Bool
	wg    sync.WaitGroup
	once  sync.Once
}

type pollLoop struct {
	epfd int
	file *os.File        // epfd, for the runtime's poller to wait on
	rc   syscall.RawConn // file's

	mu     sync.Mutex
	conns  map[int32]*Conn // by descriptor
	closed bool            // epfd is closed or about to be: nothing may be added or removed

	// Used by the loop goroutine only.
	events  [128]syscall.EpollEvent
	scratch []byte
	n       int
	err     error
	read    func(fd uintptr) // reads into scratch, sets n and err; made once, not per read
	nev     int
	wait    func(fd uintptr) bool // collects ready events into events, nev; made once
}

// pollConn is a connection's poller state.
type pollConn struct {
	c    *Conn
	loop *pollLoop
	rc   syscall.RawConn
	fd   int32

	// mu is held by the loop while it reads and handles the connection's frames, and by
	// whoever takes the connection out of the loop: after detach returns, the loop no
	// longer touches the connection, and no callback of it is running.
	mu         sync.Mutex
	registered bool // in the loop's table and epoll set
	parser     wsParser
}

// NewPoller starts runtime.GOMAXPROCS(0) epoll loops.
func NewPoller() (*Poller, error) { return newPoller(runtime.GOMAXPROCS(0)) }

func newPoller(n int) (*Poller, error) {
	p := &Poller{}
	fail := func(err error) (*Poller, error) {
		for _, l := range p.loops {
			_ = l.file.Close()
		}
		return nil, err
	}
	for i := 0; i < max(n, 1); i++ {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return fail(os.NewSyscallError("epoll_create1", err))
		}
		// Non-blocking, so that os.NewFile puts it in the runtime's poller.
		if err := syscall.SetNonblock(fd, true); err != nil {
			_ = syscall.Close(fd)
			return fail(os.NewSyscallError("fcntl", err))
		}
		l := &pollLoop{epfd: fd, file: os.NewFile(uintptr(fd), "epoll"), conns: map[int32]*Conn{}, scratch: make([]byte, pollReadSize)}
		p.loops = append(p.loops, l)
		if err := l.file.SetReadDeadline(time.Time{}); err != nil { // not in the runtime's poller
			return fail(err)
		}
		if l.rc, err = l.file.SyscallConn(); err != nil {
			return fail(err)
		}
		l.wait = func(fd uintptr) bool {
			for {
				n, err := syscall.EpollWait(int(fd), l.events[:], 0)
				switch {
				case err == syscall.EINTR:
					continue
				case err != nil:
					n = 0 // not expected; the next round tries again
				}
				l.nev = n
				return n > 0 || p.stop.Load()
			}
		}
		l.read = func(fd uintptr) {
			for {
				l.n, l.err = syscall.Read(int(fd), l.scratch)
				if l.err != syscall.EINTR {
					return
				}
			}
		}
	}
	for _, l := range p.loops {
		p.wg.Add(1)
		go l.run(p)
	}
	return p, nil
}

// Close stops the loops and waits for their goroutines. Connections still registered
// are ended as by Abort. A nil Poller's Close does nothing.
func (p *Poller) Close() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		p.stop.Store(true)
		for _, l := range p.loops {
			_ = l.file.SetReadDeadline(time.Now()) // wakes the loop
		}
		p.wg.Wait()
		for _, l := range p.loops {
			l.mu.Lock()
			conns := make([]*Conn, 0, len(l.conns))
			for _, c := range l.conns {
				conns = append(conns, c)
			}
			l.mu.Unlock()
			for _, c := range conns {
				c.shutdown()
			}
			l.mu.Lock()
			l.closed = true
			_ = l.file.Close()
			l.mu.Unlock()
		}
	})
}

// register gives c to a loop; false when it cannot (no descriptor, poller closed, epoll
// error), and then c needs a reader goroutine. c must be complete: the loop may read it
// before register returns.
func (p *Poller) register(c *Conn) bool {
	if p.stop.Load() {
		return false
	}
	sc, ok := c.ws.NetConn().(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	fd := int32(-1)
	if err := rc.Control(func(f uintptr) { fd = int32(f) }); err != nil || fd < 0 {
		return false
	}
	l := p.loops[int(p.next.Add(1)-1)%len(p.loops)]
	pc := &pollConn{c: c, loop: l, rc: rc, fd: fd, registered: true, parser: wsParser{limit: c.readLimit}}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || p.stop.Load() {
		return false
	}
	c.poll = pc
	l.conns[fd] = c
	var cerr error
	err = rc.Control(func(f uintptr) {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(f)}
		cerr = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, int(f), &ev)
	})
	if err != nil || cerr != nil {
		delete(l.conns, fd)
		c.poll = nil
		return false
	}
	return true
}

func (l *pollLoop) run(p *Poller) {
	defer p.wg.Done()
	// One event reader for all the loop's connections, on this goroutine's stack. What
	// a scan decodes does not depend on the event before (it only reuses its strings,
	// FuzzScanEventFrame), and the loop's subscribers see the same rooms and senders.
	var er eventReader
	for !p.stop.Load() {
		l.nev = 0
		if err := l.rc.Read(l.wait); err != nil && !p.stop.Load() {
			time.Sleep(10 * time.Millisecond) // not expected; do not spin
		}
		for i := 0; i < l.nev; i++ {
			// A descriptor is in the table only while registered, and a connection leaves
			// the table before its socket closes; so an event that names a descriptor
			// closed since is either not found or names the connection that now has that
			// number, which then reads EAGAIN or its own bytes.
			l.mu.Lock()
			c := l.conns[l.events[i].Fd]
			l.mu.Unlock()
			if c != nil {
				l.serve(c, &er)
			}
		}
	}
}

// serve reads what one ready connection has (one read) and handles it.
func (l *pollLoop) serve(c *Conn, er *eventReader) {
	pc := c.poll
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if !pc.registered {
		return
	}
	l.n, l.err = 0, nil
	if err := pc.rc.Control(l.read); err != nil {
		pc.endLocked(err) // closed under us; not expected, as it leaves the loop first
		return
	}
	switch n, err := l.n, l.err; {
	case err == syscall.EAGAIN:
		// Spurious or already read: nothing to do.
	case err != nil:
		pc.endLocked(c.readError(os.NewSyscallError("read", err)))
	case n == 0:
		// The end of the stream: what gorilla's reader reports then.
		pc.endLocked(&websocket.CloseError{Code: websocket.CloseAbnormalClosure, Text: io.ErrUnexpectedEOF.Error()})
	default:
		at := time.Now()
		data := l.scratch[:n]
		for {
			kind, payload, err := pc.parser.next(&data)
			if kind == framePing {
				err = pc.ping(payload)
			}
			if err != nil {
				pc.answer(err)
				pc.endLocked(err)
				return
			}
			switch kind {
			case frameNone:
				return
			case frameMessage:
				c.handleMessage(er, payload, at)
			}
		}
	}
}

// ping answers a ping as gorilla's default ping handler does.
func (pc *pollConn) ping(payload []byte) error {
	err := pc.c.ws.WriteControl(websocket.PongMessage, payload, time.Now().Add(time.Second))
	var ne net.Error
	if err == websocket.ErrCloseSent || errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

// answer sends the close frame that ends the connection with err, as gorilla's reader
// does: the echo of a close frame, or the close code of a refused frame.
func (pc *pollConn) answer(err error) {
	var msg []byte
	var ce *websocket.CloseError
	var fe *frameError
	switch {
	case errors.As(err, &ce):
		msg = websocket.FormatCloseMessage(ce.Code, "")
	case errors.As(err, &fe):
		msg = fe.closeMessage()
	}
	if msg != nil {
		_ = pc.c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	}
}

// endLocked takes the connection out of its loop and ends it with err. pc.mu is held.
func (pc *pollConn) endLocked(err error) {
	pc.detachLocked()
	pc.c.finish(err)
}

// detach takes the connection out of its loop, waiting for the loop to be done with it.
func (pc *pollConn) detach() {
	pc.mu.Lock()
	pc.detachLocked()
	pc.mu.Unlock()
}

func (pc *pollConn) detachLocked() {
	if !pc.registered {
		return
	}
	pc.registered = false
	pc.parser = wsParser{}
	l := pc.loop
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns[pc.fd] == pc.c {
		delete(l.conns, pc.fd)
	}
	if !l.closed {
		_ = pc.rc.Control(func(fd uintptr) {
			_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, int(fd), &syscall.EpollEvent{})
		})
	}
}
