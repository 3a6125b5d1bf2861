package main

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRenderBar(t *testing.T) {
	cases := []struct {
		done, total int64
		width       int
		want        string
	}{
		{0, 10, 10, "[----------]"},
		{5, 10, 10, "[#####-----]"},
		{10, 10, 10, "[##########]"},
		{15, 10, 4, "[####]"},
		{-3, 10, 4, "[----]"},
		{1, 3, 6, "[##----]"},
		{1, 0, 3, "[---]"},
	}
	for _, c := range cases {
		if got := renderBar(c.done, c.total, c.width); got != c.want {
			t.Errorf("renderBar(%d,%d,%d) = %q, want %q", c.done, c.total, c.width, got, c.want)
		}
	}
}

func TestRenderProgress(t *testing.T) {
	got := renderProgress("conns connect", progressState{Done: 250, Total: 1000, Detail: "ok 249 failed 1"}, 3200*time.Millisecond, 20)
	want := "conns connect    [#####---------------]  25%  250/1000  ok 249 failed 1    3.2s"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	got = renderProgress("fanout run", progressState{Done: 500, Total: 1000, HideCount: true, Detail: "sent 10"}, time.Second, 10)
	if got != "fanout run       [#####-----]  50%  sent 10    1.0s" {
		t.Errorf("hide count: %q", got)
	}
	got = renderProgress("users", progressState{Done: 7}, 0, 10)
	if got != "users             7    0.0s" {
		t.Errorf("no total: %q", got)
	}
	// Over 100 % is clamped in the bar and percentage, the count is shown as is.
	got = renderProgress("x", progressState{Done: 12, Total: 10}, 0, 4)
	if !strings.Contains(got, "[####] 100%  12/10") {
		t.Errorf("clamp: %q", got)
	}
}

func TestProgressLinesWhenNotATerminal(t *testing.T) {
	var buf syncBuffer
	p := newProgress(&buf, true)
	p.interval = 10 * time.Millisecond
	var n atomic.Int64
	p.Phase("phase one", func() progressState { return progressState{Done: n.Load(), Total: 4} })
	for i := 0; i < 4; i++ {
		n.Add(1)
		time.Sleep(15 * time.Millisecond)
	}
	p.Phase("phase two", func() progressState { return progressState{Done: 1, Total: 1} })
	time.Sleep(25 * time.Millisecond)
	p.Stop()
	p.Stop() // idempotent
	out := buf.String()
	if strings.Contains(out, "\r") {
		t.Fatal("carriage returns written to a non-terminal")
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		t.Fatalf("want several lines, got %q", out)
	}
	if !strings.Contains(out, "phase one        [########################] 100%  4/4") {
		t.Fatalf("final state of phase one missing:\n%s", out)
	}
	if !strings.HasPrefix(lines[len(lines)-1], "phase two") {
		t.Fatalf("last line %q", lines[len(lines)-1])
	}
	// Disabled progress writes nothing and starts nothing.
	var quiet bytes.Buffer
	q := newProgress(&quiet, false)
	q.Phase("x", func() progressState { return progressState{} })
	q.Stop()
	if quiet.Len() != 0 {
		t.Fatal("disabled progress wrote output")
	}
}

func TestProgressTerminalRedrawsInPlace(t *testing.T) {
	var buf syncBuffer
	p := newProgress(&buf, true)
	p.tty = true
	p.interval = 5 * time.Millisecond
	p.Phase("long label here", func() progressState { return progressState{Done: 1, Total: 2, Detail: "a long detail text"} })
	time.Sleep(20 * time.Millisecond)
	p.Phase("short", func() progressState { return progressState{Done: 2, Total: 2} })
	time.Sleep(20 * time.Millisecond)
	p.Stop()
	out := buf.String()
	if !strings.Contains(out, "\r") || !strings.HasSuffix(out, "\n") {
		t.Fatalf("want \\r redraws ending in a newline: %q", out)
	}
	if strings.Count(out, "\n") != 2 {
		t.Fatalf("want one line per phase: %q", out)
	}
}
