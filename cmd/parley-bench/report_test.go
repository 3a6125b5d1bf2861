package main

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/stats"
)

func sampleReport() *Report {
	r := newReport("latency", time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), []string{"127.0.0.1:8080"})
	r.ElapsedS = 12.34
	r.param("subs", 100)
	r.param("duration", 10*time.Second)
	r.param("rate", 100.5)
	r.metric("send_ok", "sends ok", 1000, "")
	r.metric("send_ok", "duplicate key ignored", 1, "")
	r.metric("send_ok_per_s", "send ok rate", 99.87654, "/s")
	r.metric("rss", "node RSS", 50*1024*1024, "bytes")
	r.metric("tiny", "tiny", 0.0123456, "ms")
	h := stats.New()
	for i := 1; i <= 1000; i++ {
		h.Record(int64(i) * 10_000) // 0.01 .. 10 ms
	}
	r.latency("send_push", "send→push <b>", h)
	r.latency("empty", "empty", stats.New())
	r.Errors = map[string]int64{"send: M_LIMIT_EXCEEDED": 3, "send: timeout": 1}
	r.fail("%d lost", 5)
	r.addNote("raise the limits")
	return r
}

func TestReportText(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"parley-bench latency  started 2025-01-02T03:04:05Z  elapsed 12.3s  target 127.0.0.1:8080",
		"PARAMETER  VALUE\nsubs       100\nduration   10s\nrate       100.5\n",
		"RESULT        VALUE\nsends ok      1000\nsend ok rate  99.88 /s\nnode RSS      52428800 (50.0 MiB)\ntiny          0.012 ms\n",
		"LATENCY (ms)",
		"send: M_LIMIT_EXCEEDED  3",
		"FAILED CHECKS\n  - 5 lost",
		"NOTES\n  - raise the limits",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "duplicate key ignored") {
		t.Error("a repeated metric key was added twice")
	}
	// the latency row: label, count, then 7 numbers
	row := regexp.MustCompile(`send→push <b>\s+1000\s+0\.010\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+10\.0\s+5\.005`)
	m := row.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("latency row not found:\n%s", out)
	}
	// exact: 5, 9, 9.9, 9.99 ms; the histogram is within 1 % (upper bucket bounds)
	for i, exact := range []float64{5, 9, 9.9, 9.99} {
		got, err := strconv.ParseFloat(m[i+1], 64)
		if err != nil || got < exact || got > exact*1.01 {
			t.Errorf("quantile %d = %s, want %v (+1%%)", i, m[i+1], exact)
		}
	}
}

func TestReportJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Scenario != "latency" || back.Format != reportFormat || len(back.Results) != 4 || back.Errors["send: timeout"] != 1 {
		t.Fatalf("%+v", back)
	}
	l := back.Latencies[0]
	if l.Key != "send_push" || l.MS.Count != 1000 || l.MS.Max != 10 || len(l.Bins) == 0 || len(l.Bins) > histBins {
		t.Fatalf("latency %+v", l)
	}
	var total int64
	for _, b := range l.Bins {
		total += b.Count
	}
	if total != 1000 {
		t.Fatalf("bins hold %d samples", total)
	}
	var raw map[string]any
	_ = json.Unmarshal(buf.Bytes(), &raw)
	for _, k := range []string{"tool", "format", "scenario", "started_at", "elapsed_s", "targets", "params", "results", "latencies", "errors", "failures", "notes"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("JSON has no %q", k)
		}
	}
}

func TestReportHTML(t *testing.T) {
	var buf bytes.Buffer
	r := sampleReport()
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.HasPrefix(out, "<!DOCTYPE html>") || strings.Contains(out, "http-equiv") {
		t.Fatal("not a standalone page")
	}
	for _, bad := range []string{"<script", "src=", "href=", "@import", "url("} {
		if strings.Contains(out, bad) {
			t.Errorf("external asset or script: %q", bad)
		}
	}
	if strings.Contains(out, "send→push <b>") || !strings.Contains(out, "send→push &lt;b&gt;") {
		t.Error("labels must be escaped")
	}
	if n := strings.Count(out, "<svg"); n != 2 {
		t.Fatalf("%d charts, want 2", n)
	}
	nonEmpty := 0
	for _, b := range r.Latencies[0].Bins {
		if b.Count > 0 {
			nonEmpty++
		}
	}
	if n := strings.Count(out, `<rect class="bar"`); n != nonEmpty {
		t.Fatalf("%d bars, want %d", n, nonEmpty)
	}
	for _, want := range []string{">p50<", ">p99<", ">p99.9<", "no samples", "5 lost", "raise the limits", "M_LIMIT_EXCEEDED", "latency (log scale)"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
}

func TestHistogramSVGGeometry(t *testing.T) {
	l := Latency{Label: "x", MS: stats.Summary{Count: 6, P50: 2, P99: 4, P999: 4},
		Bins: []BinMS{{1, 1.9, 1}, {2, 2.9, 3}, {3, 3.9, 0}, {4, 4.9, 2}}}
	svg := string(histogramSVG(l))
	// The tallest bar (3 samples) spans the whole plot height; the others scale.
	heights := regexp.MustCompile(`height="([0-9.]+)"><title>`).FindAllStringSubmatch(svg, -1)
	if len(heights) != 3 {
		t.Fatalf("bars: %v", heights)
	}
	want := []string{"55.3", "166.0", "110.7"}
	for i, h := range heights {
		if h[1] != want[i] {
			t.Errorf("bar %d height %s, want %s", i, h[1], want[i])
		}
	}
	if !strings.Contains(svg, "<title>2.000–2.900 ms: 3</title>") {
		t.Error("tooltip missing")
	}
	if x, ok := binX(l.Bins, 2, float64(svgPlotW)/4); !ok || x != float64(svgLeft)+float64(svgPlotW)/4 {
		t.Errorf("p50 marker at %v", x)
	}
}

func TestFormatValue(t *testing.T) {
	cases := map[float64]string{0: "0", 12: "12", -3: "-3", 1234.5678: "1234.6", 12.345: "12.35", 0.01234: "0.012"}
	for v, want := range cases {
		if got := formatValue(v); got != want {
			t.Errorf("formatValue(%v) = %q, want %q", v, got, want)
		}
	}
	if got := formatMetric(Metric{Value: 2048, Unit: "bytes"}); got != "2048 bytes" {
		t.Errorf("small bytes: %q", got)
	}
	if got := humanBytes(3 * 1024 * 1024 * 1024); got != "3.0 GiB" {
		t.Errorf("humanBytes: %q", got)
	}
}
