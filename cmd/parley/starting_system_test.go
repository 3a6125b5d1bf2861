package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHTTPAnswersWhileTheNodeOpens: serve binds http.listen before the node opens its data_dir
// (Raft, the log's replay, a WAL migration: long on a big log). Meanwhile every request is
// answered at once with 503, health with "unavailable" and reason "catching_up", the rest (a
// WebSocket upgrade included) with M_UNAVAILABLE, so clients try another node; they used to
// hang in the listener's backlog. Once the node is open the same listener serves it. The slow
// start is a cluster-id file replaced by a FIFO: the node's start waits at it until the test
// writes the id.
func TestHTTPAnswersWhileTheNodeOpens(t *testing.T) {
	p := startSingle(t, "slow")
	waitLeader(t, p)
	idPath := filepath.Join(p.dir, "raft", "cluster-id")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(idPath); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no cluster id recorded: %v", err)
		}
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exited %d", code)
	}
	id, err := os.ReadFile(idPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(idPath); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(idPath, 0o600); err != nil {
		t.Fatal(err)
	}
	p.start()

	quick := http.Client{Timeout: 2 * time.Second}
	get := func(path string, header http.Header) (*http.Response, error) {
		req, err := http.NewRequest(http.MethodGet, p.base()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = header
		return quick.Do(req)
	}
	var resp *http.Response
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if resp, err = get("/v1/health", nil); err == nil {
			break
		}
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() || time.Now().After(deadline) {
			t.Fatalf("/v1/health while the node opens: %v\n%s", err, p.logs())
		}
	}
	var h struct{ Status, Reason, Org, NodeID string }
	err = json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || h.Status != "unavailable" || h.Reason != "catching_up" {
		t.Fatalf("/v1/health while the node opens: %d %+v (%v), want 503 unavailable, catching_up", resp.StatusCode, h, err)
	}
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	for path, header := range map[string]http.Header{"/v1/ws": upgrade, "/v1/sync": nil} {
		resp, err := get(path, header)
		if err != nil {
			t.Fatalf("%s while the node opens: %v", path, err)
		}
		var e struct{ Code, Message string }
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusServiceUnavailable || e.Code != "M_UNAVAILABLE" || e.Message == "" {
			t.Fatalf("%s while the node opens: %d %+v (%v), want 503 M_UNAVAILABLE", path, resp.StatusCode, e, err)
		}
	}

	// The node waits at the FIFO: hand it the id (non-blocking, so no goroutine waits on it if
	// the node never opens it), and the same listener serves the open node.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f, err := os.OpenFile(idPath, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			_, err = f.Write(id)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		if !errors.Is(err, syscall.ENXIO) || time.Now().After(deadline) {
			t.Fatalf("the node did not read its cluster id: %v\n%s", err, p.logs())
		}
	}
	waitLeader(t, p)
	if strings.Contains(p.logs(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", p.logs())
	}
}
