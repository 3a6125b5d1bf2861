package node

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// tcpSession is a session over a loopback TCP connection, written by pool; the returned
// conn is the client's end.
func tcpSession(t *testing.T, srv *Server) (*session, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	s := &session{srv: srv, raw: server, rawSys: rawConnOf(server), wlock: make(chan struct{}, 1),
		urgent: make(chan struct{}, 1), log: srv.log, done: make(chan struct{})}
	if s.rawSys == nil {
		t.Skip("no non-blocking socket writes on this platform: every session has its own writer")
	}
	return s, client
}

func poolServer(t *testing.T, delay time.Duration, workers int) *Server {
	srv := pacingServer(delay)
	srv.writes = newWritePool(workers)
	t.Cleanup(srv.writes.close)
	return srv
}

func TestPoolWritesEveryFrameInOrder(t *testing.T) {
	srv := poolServer(t, 0, 2)
	s, client := tcpSession(t, srv)
	var want bytes.Buffer
	got := make(chan []byte)
	const n = 20000
	for i := range n {
		want.Write(textFrame(fmt.Appendf(nil, `{"n":%d}`, i)))
	}
	go func() {
		b, _ := io.ReadAll(io.LimitReader(client, int64(want.Len())))
		got <- b
	}()
	for i := range n {
		s.pushEvent(int64(i+1), textFrame(fmt.Appendf(nil, `{"n":%d}`, i)))
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, want.Bytes()) {
			t.Fatalf("the client read %d bytes that differ from the %d pushed in order", len(b), want.Len())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pushes did not all arrive")
	}
	s.writers.Wait()
}

// A client that stops reading fills its socket; the pool hands it to a writer of its own, so
// the pool's only worker keeps writing to everyone else, and the stuck client still gets every
// byte, in order, once it reads again.
func TestPoolHandsAFullSocketToAWriterOfItsOwn(t *testing.T) {
	srv := poolServer(t, 0, 1)
	stuck, stuckClient := tcpSession(t, srv)
	// Small socket buffers at both ends: the first write already fills them.
	_ = stuck.raw.(*net.TCPConn).SetWriteBuffer(64 << 10)
	_ = stuckClient.(*net.TCPConn).SetReadBuffer(64 << 10)
	big := bytes.Repeat([]byte("x"), 60000)
	var want bytes.Buffer
	for i := range 20 { // 1.2 MB: far beyond those buffers
		f := textFrame(append(fmt.Appendf(nil, "%06d", i), big...))
		want.Write(f)
		stuck.pushEvent(int64(i+1), f)
	}
	time.Sleep(50 * time.Millisecond) // the worker has had its turn at the stuck session
	live, liveClient := tcpSession(t, srv)
	start := time.Now()
	frame := textFrame([]byte(`{"x":1}`))
	for i := 1; i <= 50; i++ {
		live.pushEvent(int64(i), frame)
	}
	buf := make([]byte, 50*len(frame))
	_ = liveClient.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(liveClient, buf); err != nil {
		t.Fatalf("the reading client got its pushes only partly while another's socket was full: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the reading client waited %v behind a full socket", d)
	}
	got, err := io.ReadAll(io.LimitReader(stuckClient, int64(want.Len())))
	if err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("the stuck client read %d bytes (err %v), want the %d pushed, in order", len(got), err, want.Len())
	}
	stuck.writers.Wait()
	live.writers.Wait()
}

// An idle connection's write deadline lies in the past; a pool write moves it first instead
// of failing with a timeout and closing the connection.
func TestPoolWritesAfterTheDeadlinePassed(t *testing.T) {
	srv := poolServer(t, 0, 1)
	s, client := tcpSession(t, srv)
	past := time.Now().Add(-time.Minute)
	s.writeDeadline = past
	_ = s.raw.SetWriteDeadline(past)
	frame := textFrame([]byte(`{"late":true}`))
	s.pushEvent(1, frame)
	expectFrame(t, client, frame)
	s.writers.Wait()
	if s.dying.Load() {
		t.Fatal("the session is being closed after a write")
	}
}

// Once the pool is closed, a session writes on a goroutine of its own.
func TestClosedPoolLeavesWritingToTheSession(t *testing.T) {
	srv := poolServer(t, 0, 1)
	srv.writes.close()
	s, client := tcpSession(t, srv)
	frame := textFrame([]byte(`{"after":"close"}`))
	s.pushEvent(1, frame)
	expectFrame(t, client, frame)
	s.writers.Wait()
}

// Pacing still holds with the pool: a burst beyond the allowance waits for its slot on the
// session's own writer and leaves in one write.
func TestPoolKeepsPacing(t *testing.T) {
	const delay = 50 * time.Millisecond
	srv := poolServer(t, delay, 1)
	s, client := tcpSession(t, srv)
	go func() { _, _ = io.Copy(io.Discard, client) }()
	frame := textFrame([]byte(`{"p":1}`))
	start := time.Now()
	for i := range writeBurst + 5 {
		s.pushEvent(int64(i+1), frame)
		time.Sleep(time.Millisecond) // each push finds the previous one written
	}
	s.writers.Wait()
	// writeBurst writes go at once, the rest wait for the next slot.
	if d := time.Since(start); d < delay/2 {
		t.Fatalf("%d pushes left within %v: pacing (%v) was skipped", writeBurst+5, d, delay)
	}
}

func expectFrame(t *testing.T, client net.Conn, frame []byte) {
	t.Helper()
	buf := make([]byte, len(frame))
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil || !bytes.Equal(buf, frame) {
		t.Fatalf("read %q, %v; want the push", buf, err)
	}
}
