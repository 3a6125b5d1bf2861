package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-chat/parley/config"
)

// lockedWriter is a log sink written by one goroutine and read by another.
type lockedWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// joinVia is the configuration of node n2 (raft address 127.0.0.1:7001) joining through the
// member at memberURL.
func joinVia(memberURL string) *config.Config {
	cfg := &config.Config{}
	cfg.Cluster.Join, cfg.Cluster.NodeID, cfg.Cluster.RaftAdvertise = memberURL, "n2", "127.0.0.1:7001"
	return cfg
}

// A refused automatic join logs the member's reason, not only its status line: the operator of
// the joining node reads there why (an address another member holds, say).
func TestAutomaticJoinLogsTheRefusal(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	member := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		_, _ = w.Write([]byte(`{"code":"M_INVALID_PARAM","message":"raft address 127.0.0.1:7001 is n1's"}`))
	}))
	defer member.Close()
	var out lockedWriter
	cfg := joinVia(member.URL)
	done := make(chan struct{})
	go func() {
		defer close(done)
		joinCluster(ctx, slog.New(slog.NewTextHandler(&out, nil)), cfg)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "attempt=1") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if log := out.String(); !strings.Contains(log, "409 Conflict: M_INVALID_PARAM: raft address 127.0.0.1:7001 is n1's") {
		t.Fatalf("the refusal's reason is not in the log:\n%s", log)
	}
}

// A staged join that answers before the new node has caught up (503: it is a non-voter still
// catching up) is asked again until the member answers 200, once the leader has made the node a
// voter; each answer is logged with its reason.
func TestAutomaticJoinWaitsForTheNodeToBecomeAVoter(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int32
	member := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if calls.Add(1) <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"code":"M_UNAVAILABLE","message":"consensus: the joining node has not caught up yet: n2 at 127.0.0.1:7001 is a non-voter"}`))
			return
		}
		_, _ = w.Write([]byte(`{}`))
	}))
	defer member.Close()
	var out lockedWriter
	cfg := joinVia(member.URL)
	done := make(chan struct{})
	go func() {
		defer close(done)
		joinCluster(ctx, slog.New(slog.NewTextHandler(&out, nil)), cfg)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the join did not end after the member's 200:\n%s", out.String())
	}
	log := out.String()
	if n := calls.Load(); n != 3 {
		t.Fatalf("the member was asked %d times, want 3 (two 503s, then the 200)", n)
	}
	for _, want := range []string{"503 Service Unavailable: M_UNAVAILABLE: consensus: the joining node has not caught up yet", "joined the cluster"} {
		if !strings.Contains(log, want) {
			t.Fatalf("the log does not say %q:\n%s", want, log)
		}
	}
}

// A 409 whose conflict is "cluster" (this node's data_dir holds a cluster of its own or another
// cluster's) is not retried: joinCluster returns it, and serve stops.
func TestAutomaticJoinReturnsAClusterConflict(t *testing.T) {
	var calls atomic.Int32
	member := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		_, _ = w.Write([]byte(`{"code":"M_INVALID_PARAM","message":"n2 leads a cluster of its own","conflict":"cluster"}`))
	}))
	defer member.Close()
	var out lockedWriter
	cfg := joinVia(member.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := joinCluster(ctx, slog.New(slog.NewTextHandler(&out, nil)), cfg)
	if err == nil || !strings.Contains(err.Error(), "leads a cluster of its own") {
		t.Fatalf("joinCluster = %v, want the refusal", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("asked %d times, want once", n)
	}
}
