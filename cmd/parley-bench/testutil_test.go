package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// parleyBinary is the parley binary the real-node tests run (realnode_test.go): built once per
// test binary, removed by TestMain.
var parleyBinary struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// buildParley builds ./cmd/parley (once) into a temporary directory.
func buildParley(t *testing.T) string {
	t.Helper()
	parleyBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "parley-bench-node")
		if err != nil {
			parleyBinary.err = err
			return
		}
		parleyBinary.path = filepath.Join(dir, "parley")
		cmd := exec.Command("go", "build", "-o", parleyBinary.path, "../parley")
		parleyBinary.out, parleyBinary.err = cmd.CombinedOutput()
	})
	if parleyBinary.err != nil {
		t.Fatalf("building parley: %v\n%s", parleyBinary.err, parleyBinary.out)
	}
	return parleyBinary.path
}
