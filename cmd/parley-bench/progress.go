package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// progressState is what a phase reports at each refresh.
type progressState struct {
	Done, Total int64 // Total <= 0: unknown, no bar
	HideCount   bool  // show the bar and percentage only (Done/Total are not counts)
	Detail      string
}

// progress draws one status line on stderr, refreshed twice a second: on a
// terminal it is redrawn in place; otherwise one line is written per
// refresh. Each phase's last state is kept on its own line.
type progress struct {
	w        io.Writer
	enabled  bool
	tty      bool
	interval time.Duration

	mu      sync.Mutex
	label   string
	status  func() progressState
	started time.Time
	lastLen int
	stop    chan struct{}
	wg      sync.WaitGroup
}

func newProgress(w io.Writer, enabled bool) *progress {
	return &progress{w: w, enabled: enabled, tty: isTerminal(w), interval: 500 * time.Millisecond}
}

func isTerminal(w io.Writer) bool {
	if l, ok := w.(*lockedWriter); ok {
		w = l.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Phase starts a new phase, ending the previous one's line.
func (p *progress) Phase(label string, status func() progressState) {
	if !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status != nil {
		p.drawLocked(true)
	}
	p.label, p.status, p.started = label, status, time.Now()
	if p.stop == nil {
		p.stop = make(chan struct{})
		p.wg.Add(1)
		go p.loop(p.stop)
	}
}

func (p *progress) loop(stop chan struct{}) {
	defer p.wg.Done()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			p.mu.Lock()
			p.drawLocked(false)
			p.mu.Unlock()
		}
	}
}

// drawLocked writes the current line; final ends it with a newline.
func (p *progress) drawLocked(final bool) {
	if p.status == nil {
		return
	}
	line := renderProgress(p.label, p.status(), time.Since(p.started), 24)
	if p.tty {
		pad := ""
		if n := p.lastLen - len(line); n > 0 {
			pad = strings.Repeat(" ", n)
		}
		fmt.Fprintf(p.w, "\r%s%s", line, pad)
		p.lastLen = len(line)
		if final {
			fmt.Fprint(p.w, "\n")
			p.lastLen = 0
		}
		return
	}
	fmt.Fprintln(p.w, line)
}

// Stop draws the last state and stops refreshing. Safe to call twice.
func (p *progress) Stop() {
	if !p.enabled {
		return
	}
	p.mu.Lock()
	stop := p.stop
	p.stop = nil
	if stop != nil {
		p.drawLocked(true)
		p.status = nil
	}
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		p.wg.Wait()
	}
}

// renderProgress formats one progress line:
//
//	fanout run  [#########---------------]  38%  3800/10000  sent 120 ok 118   3.8s
func renderProgress(label string, st progressState, elapsed time.Duration, width int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s", label)
	if st.Total > 0 {
		done := st.Done
		if done < 0 {
			done = 0
		}
		if done > st.Total {
			done = st.Total
		}
		b.WriteString(" ")
		b.WriteString(renderBar(done, st.Total, width))
		fmt.Fprintf(&b, " %3d%%", done*100/st.Total)
		if !st.HideCount {
			fmt.Fprintf(&b, "  %d/%d", st.Done, st.Total)
		}
	} else if st.Done > 0 {
		fmt.Fprintf(&b, "  %d", st.Done)
	}
	if st.Detail != "" {
		b.WriteString("  ")
		b.WriteString(st.Detail)
	}
	fmt.Fprintf(&b, "  %5.1fs", elapsed.Seconds())
	return b.String()
}

// renderBar draws [####----] with width cells.
func renderBar(done, total int64, width int) string {
	if width < 1 {
		width = 1
	}
	filled := 0
	if total > 0 {
		filled = int(done * int64(width) / total)
	}
	if filled > width {
		filled = width
	}
	if filled < 0 {
		filled = 0
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat("-", width-filled) + "]"
}
