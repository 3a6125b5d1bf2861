package main

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

// startTestAdmin runs the admin listener with its timeouts shortened to d.
func startTestAdmin(t *testing.T, d time.Duration) string {
	t.Helper()
	oldHeader, oldRead, oldIdle := adminReadHeaderTimeout, adminReadTimeout, adminIdleTimeout
	adminReadHeaderTimeout, adminReadTimeout, adminIdleTimeout = d, d, d
	t.Cleanup(func() { adminReadHeaderTimeout, adminReadTimeout, adminIdleTimeout = oldHeader, oldRead, oldIdle })
	addr := freeAddr(t)
	stop, err := startAdmin(addr, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// waitClosed fails the test unless the server closes conn within limit.
func waitClosed(t *testing.T, conn net.Conn, r io.Reader, limit time.Duration) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(limit))
	start := time.Now()
	_, err := io.Copy(io.Discard, r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the admin listener kept the connection open for %v", limit)
	}
	t.Logf("closed after %v (err %v)", time.Since(start).Round(time.Millisecond), err)
}

// A connection that sends nothing, half a request header, half a body, or nothing more after a
// request is closed by the admin listener once its timeout expires. Before it had a ReadTimeout
// and an IdleTimeout, one stalled in its body, or left idle after a request, stayed open for ever.
func TestAdminListenerClosesStalledConnections(t *testing.T) {
	addr := startTestAdmin(t, 300*time.Millisecond)
	for _, tc := range []struct {
		name string
		send string
	}{
		{"nothing", ""},
		{"half a header", "GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\n"},
		{"half a body", "POST /debug/pprof/symbol HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0x1"},
		{"idle after a request", "GET /debug/pprof/cmdline HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, tc.send); err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(conn)
			if tc.name == "idle after a request" {
				// The answer must come, on a connection kept alive for the next request.
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.Close {
					t.Fatalf("status %d, close %v; want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
				}
			}
			waitClosed(t, conn, r, 5*time.Second)
		})
	}
}

// A CPU profile takes its ?seconds= to answer; the admin listener's timeouts must not cut it
// short (a WriteTimeout would drop the answer, a ReadTimeout would cancel the request).
func TestAdminProfileOutlastsTimeouts(t *testing.T) {
	addr := startTestAdmin(t, 300*time.Millisecond)
	client := &http.Client{Timeout: 20 * time.Second}
	start := time.Now()
	resp, err := client.Get("http://" + addr + "/debug/pprof/profile?seconds=2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the profile: %v", err)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("the profile ended after %v, before its 2 s", took)
	}
	if resp.StatusCode != http.StatusOK || len(body) == 0 || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("status %d, %d bytes, %q: want a profile\n%s", resp.StatusCode, len(body), resp.Header.Get("Content-Type"), body)
	}
	client.CloseIdleConnections()
}
