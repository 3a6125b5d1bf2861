package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/stats"
)

// reportFormat is the version of the JSON layout below.
const reportFormat = 1

// Report is the outcome of one run: the table on stdout, --json and
// --html are all renderings of it.
type Report struct {
	Tool      string           `json:"tool"`
	Format    int              `json:"format"`
	Scenario  string           `json:"scenario"`
	StartedAt time.Time        `json:"started_at"`
	ElapsedS  float64          `json:"elapsed_s"`
	Targets   []string         `json:"targets"`
	Params    []Param          `json:"params"`
	Results   []Metric         `json:"results"`
	Latencies []Latency        `json:"latencies,omitempty"`
	Errors    map[string]int64 `json:"errors,omitempty"`
	// Failures are failed correctness checks (lost, duplicate or missing
	// events); any makes the exit status 1.
	Failures []string `json:"failures,omitempty"`
	Notes    []string `json:"notes,omitempty"`
}

// Param is one input of the run.
type Param struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Metric is one result. Key is stable for scripts; Label is for people.
type Metric struct {
	Key   string  `json:"key"`
	Label string  `json:"label"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
}

// Latency is a latency distribution, in milliseconds.
type Latency struct {
	Key   string        `json:"key"`
	Label string        `json:"label"`
	MS    stats.Summary `json:"ms"`
	Bins  []BinMS       `json:"bins,omitempty"`
}

// BinMS is one histogram bar: Count samples in [LoMS, HiMS].
type BinMS struct {
	LoMS  float64 `json:"lo_ms"`
	HiMS  float64 `json:"hi_ms"`
	Count int64   `json:"count"`
}

const histBins = 40

func newReport(scenario string, started time.Time, targets []string) *Report {
	return &Report{Tool: "parley-bench", Format: reportFormat, Scenario: scenario, StartedAt: started.UTC(), Targets: targets}
}

func (r *Report) param(name string, v any) {
	var s string
	switch x := v.(type) {
	case time.Duration:
		s = x.String()
	case float64:
		s = strconv.FormatFloat(x, 'g', -1, 64)
	default:
		s = fmt.Sprint(v)
	}
	r.Params = append(r.Params, Param{Name: name, Value: s})
}

// metric adds a result row; a key already present is left as it is (so a
// scenario can put its headline rows first, with its own labels).
func (r *Report) metric(key, label string, v float64, unit string) {
	if _, dup := r.Metric(key); dup {
		return
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		v = 0
	}
	r.Results = append(r.Results, Metric{Key: key, Label: label, Value: v, Unit: unit})
}

// latency adds a nanosecond histogram as milliseconds.
func (r *Report) latency(key, label string, h *stats.Histogram) {
	l := Latency{Key: key, Label: label, MS: h.Summarize(1e6)}
	for _, b := range h.LogBins(histBins) {
		l.Bins = append(l.Bins, BinMS{LoMS: float64(b.Lo) / 1e6, HiMS: float64(b.Hi) / 1e6, Count: b.Count})
	}
	r.Latencies = append(r.Latencies, l)
}

func (r *Report) fail(format string, a ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, a...))
}

func (r *Report) addNote(format string, a ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, a...))
}

// Metric looks a result up by key.
func (r *Report) Metric(key string) (Metric, bool) {
	for _, m := range r.Results {
		if m.Key == key {
			return m, true
		}
	}
	return Metric{}, false
}

// formatValue prints integers without decimals and other values with
// three significant decimals at most.
func formatValue(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatInt(int64(v), 10)
	}
	a := math.Abs(v)
	switch {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

func formatMetric(m Metric) string {
	s := formatValue(m.Value)
	if m.Unit == "bytes" && m.Value >= 10*1024 {
		s += " (" + humanBytes(m.Value) + ")"
	} else if m.Unit != "" {
		s += " " + m.Unit
	}
	return s
}

func humanBytes(v float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	a := math.Abs(v)
	for a >= 1024 && i < len(units)-1 {
		a /= 1024
		v /= 1024
		i++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + units[i]
}

// WriteText renders the human table.
func (r *Report) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	fmt.Fprintf(ew, "parley-bench %s  started %s  elapsed %.1fs  target %s\n\n",
		r.Scenario, r.StartedAt.Format(time.RFC3339), r.ElapsedS, strings.Join(r.Targets, ","))

	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	if len(r.Params) > 0 {
		fmt.Fprintln(tw, "PARAMETER\tVALUE")
		for _, p := range r.Params {
			fmt.Fprintf(tw, "%s\t%s\n", p.Name, p.Value)
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw, "RESULT\tVALUE")
	for _, m := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\n", m.Label, formatMetric(m))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(r.Latencies) > 0 {
		fmt.Fprintln(ew)
		tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "LATENCY (ms)\tCOUNT\tMIN\tP50\tP90\tP99\tP99.9\tMAX\tMEAN\t")
		for _, l := range r.Latencies {
			s := l.MS
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", l.Label, s.Count,
				fmtMS(s.Min), fmtMS(s.P50), fmtMS(s.P90), fmtMS(s.P99), fmtMS(s.P999), fmtMS(s.Max), fmtMS(s.Mean))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(ew)
		tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ERROR\tCOUNT")
		for _, k := range sortedKeys(r.Errors) {
			fmt.Fprintf(tw, "%s\t%d\n", k, r.Errors[k])
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(r.Failures) > 0 {
		fmt.Fprintln(ew, "\nFAILED CHECKS")
		for _, f := range r.Failures {
			fmt.Fprintf(ew, "  - %s\n", f)
		}
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(ew, "\nNOTES")
		for _, n := range r.Notes {
			fmt.Fprintf(ew, "  - %s\n", n)
		}
	}
	return ew.err
}

func fmtMS(v float64) string {
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}
