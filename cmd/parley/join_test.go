package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
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
	cfg := &config.Config{}
	cfg.Cluster.Join, cfg.Cluster.NodeID, cfg.Cluster.RaftAdvertise = member.URL, "n2", "127.0.0.1:7001"
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
