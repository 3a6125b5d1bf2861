package consensus

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

func startTestMux(t *testing.T, secret string) *mux {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, "n1", secret, nil, nil, quietLogger())
	t.Cleanup(m.close)
	return m
}

// closedWithin reports how long the mux took to close conn, failing the test past limit.
func closedWithin(t *testing.T, conn net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection was still open after %v", limit)
	}
	return time.Since(start)
}

// An inbound cluster connection that never completes its handshake (nothing, or part of the
// kind byte and proof) is closed once handshakeTimeout has passed, not held for ever.
func TestMuxClosesStalledHandshake(t *testing.T) {
	m := startTestMux(t, "s3cret")
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"nothing", nil},
		{"half a handshake", append([]byte{streamRaft}, make([]byte, 10)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conn, err := net.Dial("tcp", m.ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			took := closedWithin(t, conn, handshakeTimeout+3*time.Second)
			if took < handshakeTimeout-time.Second {
				t.Errorf("closed after %v, before the handshake timeout of %v", took, handshakeTimeout)
			}
		})
	}
}

// Closing the mux closes the connections still in their handshake at once. It used to wait for
// each to time out (handshakeTimeout), delaying a node's shutdown by as much.
func TestMuxCloseEndsPendingHandshakes(t *testing.T) {
	m := startTestMux(t, "s3cret")
	conn, err := net.Dial("tcp", m.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Until the mux has accepted it: before that, close would only reset it in the backlog.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m.mu.Lock()
		accepted := len(m.conns) == 1
		m.mu.Unlock()
		if accepted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the mux did not accept the connection")
		}
	}
	start := time.Now()
	m.close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("close took %v with a handshake pending", took)
	}
	closedWithin(t, conn, time.Second)
}

// Raft connections that name no node (an older build's, during a rolling upgrade) are refused,
// counted, and logged once per misdirectedLogEvery with the count, not once a connection: such
// a peer dials again at every heartbeat.
func TestMuxLogsUntaggedRaftConnectionsOncePerInterval(t *testing.T) {
	var logs lockedBuffer
	m := startMuxLoggingTo(t, &logs)
	ln := m.ln
	older := startTestMux(t, "s3cret")
	for range 3 {
		conn, err := older.dial(streamRaft, ln.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		closedWithin(t, conn, 5*time.Second)
		conn.Close()
	}
	if n := m.untagged.Load(); n != 3 {
		t.Fatalf("%d connections naming no node counted, want 3", n)
	}
	if out := logs.from(0); strings.Count(out, "names no node") != 1 || !strings.Contains(out, "refused_since_last_line=1") {
		t.Fatalf("want one log line about the 3 connections naming no node:\n%s", out)
	}
}

// startMuxLoggingTo starts the mux of node n1 (secret "s3cret") on a loopback port, its log
// lines going to logs.
func startMuxLoggingTo(t *testing.T, logs *lockedBuffer) *mux {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, "n1", "s3cret", nil, nil, slog.New(slog.NewTextHandler(logs, nil)))
	t.Cleanup(m.close)
	return m
}

// With cluster.tls the dial's first write runs the TLS handshake, which waits for the peer's
// answer: a peer that accepts and never answers (a paused process) must not hold the dial
// beyond its timeout. Only a write deadline was set, and the dial waited for good.
func TestATLSDialToAPeerThatNeverAnswersEndsAtItsTimeout(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if conn, err := silent.Accept(); err == nil {
			accepted <- conn // held open, never read nor answered
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, "n1", "s3cret", nil, &tls.Config{ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}, quietLogger())
	t.Cleanup(m.close)
	done := make(chan error, 1)
	go func() {
		conn, err := m.dial(streamForward, silent.Addr().String(), 200*time.Millisecond)
		if conn != nil {
			conn.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a dial to a peer that never answered its TLS handshake succeeded")
		}
	case <-time.After(5 * time.Second):
		silent.Close()
		if conn := <-accepted; conn != nil {
			conn.Close() // ends the stuck handshake, so the test leaks nothing
		}
		t.Fatal("a dial with a 200 ms timeout still waited for the TLS handshake after 5 s")
	}
	(<-accepted).Close()
}
